import FuzzSupport
@_spi(Fuzzing) import TenantEngine

/// Decodes the input as start-up reads `catalog/tenants.bin` (or the JSON `tenants.json` of
/// earlier versions): as it is, and, for input that is not a whole file, as a body inside a file
/// whose length and checksum are valid, which is where crafted counts and strings get past them.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCatalog(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    _ = DecoderEntryPoints.decodeCatalog(bytes)
    if !bytes.starts(with: Checksums.catalogMagic) {
        _ = DecoderEntryPoints.decodeCatalog(Checksums.catalog(body: bytes))
    }
    return 0
}
