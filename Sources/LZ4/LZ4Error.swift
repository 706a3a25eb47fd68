/// An error raised by the lz4 codec.
public struct LZ4Error: Error, Hashable, CustomStringConvertible, Sendable {
    private enum Code: Hashable, Sendable {
        case inputTooLarge(Int)
        case compressionFailed
        case corruptInput
        case sizeMismatch(expected: Int, actual: Int)
        case declaredSizeTooLarge(Int)
    }

    private let code: Code

    private init(_ code: Code) {
        self.code = code
    }

    /// The input is larger than the codec accepts.
    public static func inputTooLarge(_ size: Int) -> LZ4Error { LZ4Error(.inputTooLarge(size)) }
    /// liblz4 refused to compress the input.
    public static let compressionFailed = LZ4Error(.compressionFailed)
    /// The compressed bytes are not a valid lz4 block.
    public static let corruptInput = LZ4Error(.corruptInput)
    /// The block decoded to another size than the one declared for it.
    public static func sizeMismatch(expected: Int, actual: Int) -> LZ4Error {
        LZ4Error(.sizeMismatch(expected: expected, actual: actual))
    }
    /// A declared uncompressed size is above the codec's bound.
    public static func declaredSizeTooLarge(_ size: Int) -> LZ4Error { LZ4Error(.declaredSizeTooLarge(size)) }

    public var description: String {
        switch self.code {
        case .inputTooLarge(let size): return "lz4: input of \(size) bytes is too large"
        case .compressionFailed: return "lz4: compression failed"
        case .corruptInput: return "lz4: corrupt compressed input"
        case .sizeMismatch(let expected, let actual):
            return "lz4: decoded \(actual) bytes, \(expected) declared"
        case .declaredSizeTooLarge(let size): return "lz4: declared size \(size) is above the bound"
        }
    }
}
