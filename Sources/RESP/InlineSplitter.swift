/// Splits an inline command line into words as Redis's `sdssplitargs` does: words separated by
/// white space, `"double quoted"` words with the escapes `\n \r \t \b \a \\ \" \xHH`, and
/// `'single quoted'` words where only `\'` is an escape. A closing quote must end its word.
public enum InlineSplitter {
    /// The words of `line`, or nil for unbalanced quotes.
    /// - Complexity: O(n).
    public static func split(_ line: [UInt8]) -> [[UInt8]]? {
        var words: [[UInt8]] = []
        var index = 0
        let count = line.count
        while true {
            while index < count && isSpace(line[index]) { index += 1 }
            if index >= count { return words }
            var word: [UInt8] = []
            var inDouble = false
            var inSingle = false
            var done = false
            while !done {
                if inDouble {
                    guard index < count else { return nil }
                    let byte = line[index]
                    if byte == UInt8(ascii: "\\") && index + 3 < count && line[index + 1] == UInt8(ascii: "x"),
                        let high = hexValue(line[index + 2]), let low = hexValue(line[index + 3])
                    {
                        word.append(high << 4 | low)
                        index += 3
                    } else if byte == UInt8(ascii: "\\") && index + 1 < count {
                        index += 1
                        switch line[index] {
                        case UInt8(ascii: "n"): word.append(10)
                        case UInt8(ascii: "r"): word.append(13)
                        case UInt8(ascii: "t"): word.append(9)
                        case UInt8(ascii: "b"): word.append(8)
                        case UInt8(ascii: "a"): word.append(7)
                        default: word.append(line[index])
                        }
                    } else if byte == UInt8(ascii: "\"") {
                        if index + 1 < count && !isSpace(line[index + 1]) { return nil }
                        done = true
                    } else {
                        word.append(byte)
                    }
                } else if inSingle {
                    guard index < count else { return nil }
                    let byte = line[index]
                    if byte == UInt8(ascii: "\\") && index + 1 < count && line[index + 1] == UInt8(ascii: "'") {
                        index += 1
                        word.append(UInt8(ascii: "'"))
                    } else if byte == UInt8(ascii: "'") {
                        if index + 1 < count && !isSpace(line[index + 1]) { return nil }
                        done = true
                    } else {
                        word.append(byte)
                    }
                } else {
                    if index >= count { break }
                    let byte = line[index]
                    switch byte {
                    case _ where isSpace(byte): done = true
                    case UInt8(ascii: "\""): inDouble = true
                    case UInt8(ascii: "'"): inSingle = true
                    default: word.append(byte)
                    }
                }
                if index < count { index += 1 }
            }
            words.append(word)
        }
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 32 || byte == 9 || byte == 10 || byte == 13 || byte == 11 || byte == 12
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
