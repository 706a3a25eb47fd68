import FuzzSupport
@_spi(Fuzzing) import TenantEngine

/// Input that starts with the checkpoint magic is decoded as a checkpoint file, as it is and
/// with its checksums made valid; any other input is taken as a checkpoint body (metadata, users,
/// rooms) and decoded inside a valid file, which is where crafted counts and numbers get past
/// the checksums.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    if bytes.starts(with: Checksums.checkpointMagic) {
        _ = try? DecoderEntryPoints.decodeCheckpoint(bytes)
        if let fixed = Checksums.fixingCheckpoint(bytes) { _ = try? DecoderEntryPoints.decodeCheckpoint(fixed) }
    } else {
        // Small blocks, so that bodies spanning several blocks are tried too.
        _ = try? DecoderEntryPoints.decodeCheckpoint(Checksums.checkpoint(body: bytes, blockSize: 1 << 10))
    }
    return 0
}
