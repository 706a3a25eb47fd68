import FuzzSupport
@_spi(Fuzzing) import TenantEngine

/// Input that starts with the checkpoint magic is decoded as a checkpoint file, as it is and
/// with its checksums made valid; any other input is taken as a checkpoint body (metadata, users,
/// rooms) and decoded inside a valid file, which is where crafted counts and numbers get past
/// the checksums. Every file is also decoded as the shared log's checkpoint (the same container,
/// every tenant's body in one).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    if Checksums.isCheckpoint(bytes) {
        _ = try? DecoderEntryPoints.decodeCheckpoint(bytes)
        _ = try? DecoderEntryPoints.decodeSharedCheckpoint(bytes)
        if let fixed = Checksums.fixingCheckpoint(bytes) {
            _ = try? DecoderEntryPoints.decodeCheckpoint(fixed)
            _ = try? DecoderEntryPoints.decodeSharedCheckpoint(fixed)
        }
    } else {
        // Small blocks, so that bodies spanning several blocks are tried too.
        let file = Checksums.checkpoint(body: bytes, blockSize: 1 << 10)
        _ = try? DecoderEntryPoints.decodeCheckpoint(file)
        _ = try? DecoderEntryPoints.decodeSharedCheckpoint(file)
    }
    return 0
}
