import Logging

extension Logger {
    /// A logger for tests: errors only, so the suite's output stays readable.
    public static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        return logger
    }
}
