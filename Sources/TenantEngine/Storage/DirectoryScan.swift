import Logging
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// What a `database` store's start-up finds in its roots: the tenant directories (one per
/// tenant, a move interrupted by a crash settled), the tenants handed to other servers, and the
/// leftovers (trash, creations and moves that never finished) removed. Blocking file work, run
/// off the registry.
struct DirectoryScan {
    let fileSystem: any WALFileSystem
    let logger: Logger
    /// When the scan runs (ms): the stamp of a second copy set aside.
    let now: Int64
    /// Each tenant's root.
    private(set) var found: [String: (region: String, layout: DataLayout)] = [:]
    /// Tenants whose second copy could not be set aside: their marker stays for the next start.
    private(set) var unsettled: Set<String> = []
    /// The newest departure of each tenant handed over.
    private(set) var departures: [String: Departure] = [:]

    init(fileSystem: any WALFileSystem, logger: Logger, now: Int64) {
        self.fileSystem = fileSystem
        self.logger = logger
        self.now = now
        self.found.reserveCapacity(1024)
    }

    /// Reads one root: region `region`'s (the data directory's is "").
    mutating func scan(_ root: DataLayout, region: String) throws {
        for (name, isDirectory) in try self.fileSystem.listDirectoryEntries(root.root) {
            if isDirectory, let id = root.tenantID(ofDirectoryNamed: name) {
                // Handed to another server (its commit not yet confirmed), or a marker that
                // cannot be read: never served here.
                guard !self.handedOver(id, root.entry(name)) else { continue }
                self.found(id, in: (region, root))
            } else if name == DataLayout.migratedName, isDirectory {
                for (kept, _) in (try? self.fileSystem.listDirectoryEntries(root.migratedDirectory)) ?? [] {
                    let path = TenantFiles(root.migratedDirectory).file(kept)
                    if case .departed(let departure) = Departure.probe(id: nil, directory: path, committed: true) {
                        self.departed(departure)
                    }
                }
            } else if name == DataLayout.trashName || name.hasPrefix(DataLayout.stagingPrefix)
                || name.hasPrefix(DataLayout.movingPrefix)
            {
                // Deleted tenants, creations that crashed before their rename (never
                // acknowledged, so never tenants), moves that crashed before theirs.
                do {
                    try self.fileSystem.removeTree(root.entry(name))
                } catch {
                    self.logger.warning("could not remove \(name) from \(root.root): \(error)")
                }
            }
        }
    }

    /// A tenant directory: the first of its id, or a second copy to settle.
    private mutating func found(_ id: String, in place: (region: String, layout: DataLayout)) {
        guard let first = self.found[id] else {
            self.found[id] = place
            return
        }
        let (winner, settled) = DirectoryStore.resolveTwoCopies(
            id,
            first,
            place,
            fileSystem: self.fileSystem,
            logger: self.logger,
            stamp: self.now
        )
        self.found[id] = winner
        if !settled { self.unsettled.insert(id) }
    }

    private mutating func departed(_ departure: Departure) {
        if let known = self.departures[departure.id], known.at > departure.at { return }
        self.departures[departure.id] = departure
    }

    /// Whether the directory was handed to another server (or its marker cannot be read).
    private mutating func handedOver(_ id: String, _ directory: String) -> Bool {
        switch Departure.probe(id: id, directory: directory, committed: false) {
        case .absent:
            return false
        case .departed(let departure):
            self.departed(departure)
            return true
        case .unreadable(let problem):
            self.logger.error(
                "tenant directory \(directory) is not served: its migration marker cannot be read (\(problem)); fix it and restart"
            )
            return true
        }
    }

    /// Places every tenant found in its region, and removes the marker of a move whose source is
    /// gone already.
    func settle(_ placement: DirectoryStore.Placement) {
        for (id, place) in self.found {
            placement.set(id, region: place.region)
            let marker = place.layout.tenantFiles(id).movedFrom
            if !self.unsettled.contains(id), self.fileSystem.exists(marker) {
                try? self.fileSystem.remove(marker)
                try? self.fileSystem.syncDirectory(place.layout.tenantDirectory(id))
            }
        }
    }
}

extension DirectoryStore {
    /// Two directories of one tenant, in two roots: a move interrupted after its copy was renamed
    /// into place and before its source was removed. The copy that carries the marker naming the
    /// other wins, and the other goes to its root's trash. Without such a marker (copied by hand)
    /// nothing is removed: the first root's is served and the operator is told.
    static func resolveTwoCopies(
        _ id: String,
        _ first: (region: String, layout: DataLayout),
        _ second: (region: String, layout: DataLayout),
        fileSystem: any WALFileSystem,
        logger: Logger,
        stamp: Int64
    ) -> (winner: (region: String, layout: DataLayout), settled: Bool) {
        func movedFrom(_ place: (region: String, layout: DataLayout)) -> String? {
            let marker = place.layout.tenantFiles(id).movedFrom
            return (try? fileSystem.readFile(marker)).map { String(decoding: $0, as: UTF8.self) }
        }
        for (winner, loser) in [(second, first), (first, second)] {
            guard movedFrom(winner) == loser.layout.tenantDirectory(id) else { continue }
            let stale = loser.layout.tenantDirectory(id)
            do {
                if try fileSystem.makeDirectory(loser.layout.trashDirectory) {
                    try fileSystem.syncDirectory(loser.layout.root)
                }
                try fileSystem.rename(stale, to: loser.layout.trashEntry(id, stamp: stamp))
                try fileSystem.syncDirectory(loser.layout.root)
                logger.notice(
                    "finished the move of tenant \(id) interrupted by a crash: serving \(winner.layout.tenantDirectory(id)), removed \(stale)",
                    metadata: ["event": "tenant_moved", "tenant_id": "\(id)"]
                )
                return (winner, true)
            } catch {
                logger.error("tenant \(id): could not remove the source of a finished move, \(stale): \(error)")
                return (winner, false)
            }
        }
        logger.error(
            "tenant \(id) is in two places, \(first.layout.tenantDirectory(id)) and \(second.layout.tenantDirectory(id)): serving the first; remove the other"
        )
        return (first, true)
    }

    /// Refuses roots that are one directory under two names (or one inside another), a root that
    /// holds another region's identity, and a root that was in use before but no longer says so
    /// (a volume not mounted: serving it empty would drop its tenants). A new root gets its
    /// identity, and the data directory a note that the region is in use.
    static func checkRegionRoots(
        _ data: DataLayout,
        _ regions: [(key: String, value: DataLayout)],
        fileSystem: any WALFileSystem
    ) throws {
        var real: [(String, String)] = [("the data directory", try Self.realPath(data.root))]
        for (name, layout) in regions {
            guard fileSystem.isDirectory(layout.root) else {
                throw TenantError(
                    .refused,
                    "region \(name)'s root \(layout.root) is not a directory: make it (or mount it)"
                )
            }
            let path = try Self.realPath(layout.root)
            for (other, otherPath) in real
            where path == otherPath || path.hasPrefix(otherPath + "/") || otherPath.hasPrefix(path + "/") {
                throw TenantError(
                    .refused,
                    "region \(name)'s root \(layout.root) is \(other)'s, or inside it: each region needs a root of its own"
                )
            }
            real.append(("region \(name)", path))
            let identity = layout.regionIdentityFile
            let known = data.regionRecord(name)
            if let bytes = try? fileSystem.readFile(identity) {
                let said = String(String(decoding: bytes, as: UTF8.self).prefix { $0 != "\n" && $0 != "\r" })
                guard said == name else {
                    throw TenantError(.refused, "\(layout.root) is region \(said)'s root, not \(name)'s")
                }
            } else {
                guard !fileSystem.exists(known) else {
                    throw TenantError(
                        .refused,
                        "region \(name)'s root \(layout.root) has no \(DataLayout.regionIdentityName), though the region was in use: is its volume mounted?"
                    )
                }
                try fileSystem.writeFileAtomically(identity, contents: Array((name + "\n").utf8))
            }
            if !fileSystem.exists(known) {
                if try fileSystem.makeDirectory(data.regionsDirectory) { try fileSystem.syncDirectory(data.root) }
                try fileSystem.writeFileAtomically(known, contents: Array((layout.root + "\n").utf8))
            }
        }
    }

    static func realPath(_ path: String) throws -> String {
        guard let resolved = realpath(path, nil) else {
            throw TenantError(.refused, "cannot resolve \(path): \(POSIXFile.errorString(errno))")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }

}
