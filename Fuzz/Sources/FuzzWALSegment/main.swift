import FuzzSupport
@_spi(Fuzzing) import WAL

/// Reads the input as a segment, as the newest one (a damaged tail is torn) and as an older one
/// (any damage is corruption), then again with its checksums made valid so that mutations reach
/// the record decoding behind them.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWALSegment(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    // The lsn the file name would stand for: the header's, so that it matches when intact.
    let firstLSN = bytes.count >= 16 ? bytes[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } : 1
    read(bytes, firstLSN: firstLSN)
    if let fixed = Checksums.fixingSegment(bytes) { read(fixed, firstLSN: firstLSN) }
    return 0
}

private func read(_ bytes: [UInt8], firstLSN: UInt64) {
    for isLast in [true, false] {
        var sum: UInt8 = 0
        let result = try? WALReader.readSegment(bytes, firstLSN: firstLSN, isLast: isLast, maxRecordSize: 1 << 20) {
            record in
            // Touch every payload byte: the view must be valid memory of the declared size.
            for byte in record.payload { sum &+= byte }
        }
        if let torn = result?.tornTail {
            precondition(torn.offset >= 0 && torn.offset <= bytes.count, "torn tail outside the file")
        }
        _ = sum
    }
}
