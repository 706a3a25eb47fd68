@_spi(Fuzzing) import TenantEngine

/// Decodes the input as a replica reads its primary's stream (docs/architecture.md, "Replicas"):
/// as it is, and as the body of one frame whose length and checksum are right, which is where
/// crafted kinds, ids, lsns and byte counts get past the checksum.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReplicationStream(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    _ = DecoderEntryPoints.decodeReplicationStream(bytes)
    if !bytes.isEmpty {
        _ = DecoderEntryPoints.decodeReplicationStream(DecoderEntryPoints.replicationFrame(body: bytes))
    }
    return 0
}
