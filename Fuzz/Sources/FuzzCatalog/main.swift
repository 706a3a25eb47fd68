@_spi(Fuzzing) import TenantEngine

/// Decodes the input as `catalog/tenants.json`, as start-up does.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCatalog(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = DecoderEntryPoints.decodeCatalog(Array(UnsafeRawBufferPointer(start: start, count: count)))
    return 0
}
