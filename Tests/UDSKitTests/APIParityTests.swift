import Foundation
import Testing

/// The blocking and the async level have the same members, with the same
/// names and labels: read from the library's source, so that a member added
/// to one level and not the other fails here.
@Suite("API parity between the blocking and the async level")
struct APIParityTests {
    /// Each blocking type and its async twin.
    static let pairs: [(blocking: String, async: String)] = [
        ("StreamSocket", "AsyncStreamSocket"),
        ("StreamListener", "AsyncStreamListener"),
        ("SeqpacketSocket", "AsyncSeqpacketSocket"),
        ("SeqpacketListener", "AsyncSeqpacketListener"),
        ("DatagramSocket", "AsyncDatagramSocket"),
    ]

    /// What only the async level has, and why.
    static let asyncOnly: Set<String> = [
        "eventLoop",  // the loop it is registered with
        "init(_:)",  // takes over a blocking socket
        "setReadinessHandler(_:)",  // the readiness level: handlers on the loop
        "tryAccept()",  // for readiness handlers
        "messages(maximumSize:)",  // an AsyncSequence; a blocking loop calls receive
    ]

    static let api = PublicAPI(sources: URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/UDSKit"))

    @Test(arguments: pairs.map { "\($0.blocking) / \($0.async)" })
    func bothLevelsHaveTheSameMembers(_ pair: String) throws {
        let names = pair.components(separatedBy: " / ")
        let blocking = try Self.api.members(of: names[0])
        let async = try Self.api.members(of: names[1])
        // The parser found the types' real members, not an empty set.
        #expect(blocking.contains("close()") && async.contains("close()"), "\(blocking)")
        #expect(blocking.count >= 8, "\(names[0]): \(blocking.sorted())")
        let missingInAsync = blocking.subtracting(async)
        let missingInBlocking = async.subtracting(blocking).subtracting(Self.asyncOnly)
        #expect(missingInAsync.isEmpty, "\(names[1]) lacks \(missingInAsync.sorted())")
        #expect(missingInBlocking.isEmpty, "\(names[0]) lacks \(missingInBlocking.sorted())")
    }

    @Test func theParserSeesInheritedAndProtocolMembers() throws {
        let members = try Self.api.members(of: "StreamSocket")
        for expected in [
            "connect(to:from:bindOptions:timeout:)", "read(into:timeout:)", "release()", "peerCredentials()",
            "setNoDelay(_:)", "keepsIncomingDescriptors", "writeFrame(_:format:timeout:)", "init(adopting:)",
        ] {
            #expect(members.contains(expected), "\(expected) not in \(members.sorted())")
        }
        #expect(try !Self.api.members(of: "StreamListener").contains("read(into:timeout:)"))
    }
}

/// The public members of the library's types, read from its source: each
/// type's own (in its body and its extensions), its superclass's and its
/// protocols' (from their extensions), as `name(label:label:)` or `name`.
struct PublicAPI {
    struct Declared {
        var members: Set<String> = []
        var inherits: [String] = []
    }

    let declared: [String: Declared]

    init(sources: URL) {
        var declared: [String: Declared] = [:]
        let files = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)?
            .compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" } ?? []
        for file in files {
            guard let text = try? String(contentsOf: file, encoding: .utf8) else { continue }
            for (type, inherits, body) in Self.topLevelDeclarations(Self.strippingCommentsAndStrings(text)) {
                declared[type, default: Declared()].inherits += inherits
                declared[type, default: Declared()].members.formUnion(Self.publicMembers(body))
            }
        }
        self.declared = declared
    }

    struct UnknownType: Error, CustomStringConvertible {
        let name: String
        var description: String { "no public type \(name) in the sources" }
    }

    func members(of type: String) throws -> Set<String> {
        guard declared[type] != nil else { throw UnknownType(name: type) }
        var seen: Set<String> = []
        var result: Set<String> = []
        var pending = [type]
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, let found = declared[next] else { continue }
            result.formUnion(found.members)
            pending += found.inherits
        }
        return result
    }

    /// Removes comments and string literals, whose braces and words are not code.
    static func strippingCommentsAndStrings(_ text: String) -> String {
        var result = ""
        var index = text.startIndex
        func peek(_ offset: Int) -> Character? {
            text.index(index, offsetBy: offset, limitedBy: text.endIndex).flatMap { $0 < text.endIndex ? text[$0] : nil }
        }
        while index < text.endIndex {
            let character = text[index]
            if character == "/" && peek(1) == "/" {
                while index < text.endIndex && text[index] != "\n" { index = text.index(after: index) }
                continue
            }
            if character == "/" && peek(1) == "*" {
                while index < text.endIndex && !(text[index] == "*" && peek(1) == "/") { index = text.index(after: index) }
                index = text.index(index, offsetBy: 2, limitedBy: text.endIndex) ?? text.endIndex
                continue
            }
            if character == "\"" {
                let multiline = peek(1) == "\"" && peek(2) == "\""
                index = text.index(index, offsetBy: multiline ? 3 : 1)
                while index < text.endIndex {
                    if text[index] == "\\" {
                        index = text.index(index, offsetBy: 2, limitedBy: text.endIndex) ?? text.endIndex
                        continue
                    }
                    if text[index] == "\"" && (!multiline || (peek(1) == "\"" && peek(2) == "\"")) {
                        index = text.index(index, offsetBy: multiline ? 3 : 1)
                        break
                    }
                    if !multiline && text[index] == "\n" { break }
                    index = text.index(after: index)
                }
                result += "\"\""
                continue
            }
            result.append(character)
            index = text.index(after: index)
        }
        return result
    }

    /// Each top-level `class`, `struct`, `enum`, `protocol` or `extension`:
    /// its name, what it inherits or conforms to, and its body.
    static func topLevelDeclarations(_ code: String) -> [(String, [String], Substring)] {
        var found: [(String, [String], Substring)] = []
        let characters = Array(code)
        var depth = 0
        var lineStart = 0
        var index = 0
        while index < characters.count {
            let character = characters[index]
            if character == "\n" { lineStart = index + 1 }
            if character == "{" {
                if depth == 0 {
                    let header = String(characters[lineStart..<index])
                    let bodyStart = index + 1
                    var inner = 1
                    var end = bodyStart
                    while end < characters.count && inner > 0 {
                        if characters[end] == "{" { inner += 1 }
                        if characters[end] == "}" { inner -= 1 }
                        end += 1
                    }
                    if let (name, inherits) = declarationHeader(header) {
                        found.append((name, inherits, Substring(String(characters[bodyStart..<max(bodyStart, end - 1)]))))
                    }
                    index = end
                    continue
                }
                depth += 1
            }
            if character == "}" { depth -= 1 }
            index += 1
        }
        return found
    }

    static func declarationHeader(_ header: String) -> (String, [String])? {
        let words = header.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard let keyword = words.firstIndex(where: { ["class", "struct", "enum", "protocol", "extension"].contains($0) }),
            keyword + 1 < words.count
        else { return nil }
        let name = String(words[keyword + 1].prefix { $0.isLetter || $0.isNumber || $0 == "_" })
        var inherits: [String] = []
        if let colon = header.firstIndex(of: ":"), header[..<colon].contains(name) {
            let clause = header[header.index(after: colon)...].prefix { $0 != "{" }
            let beforeWhere = clause.components(separatedBy: " where ")[0]
            inherits = beforeWhere.split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "@unchecked ", with: "")
            }
        }
        // `extension P where Self == X` adds to P's conformers through P.
        return (name, inherits)
    }

    /// `public` members declared directly in `body` (not in nested types).
    static func publicMembers(_ body: Substring) -> Set<String> {
        var members: Set<String> = []
        let characters = Array(body)
        var depth = 0
        var index = 0
        var lineStart = 0
        // A declaration belongs to this body if its line starts at depth 0.
        var depthAtLineStart = 0
        while index < characters.count {
            let character = characters[index]
            if character == "{" { depth += 1 }
            if character == "}" { depth -= 1 }
            if character == "\n" {
                let line = String(characters[lineStart..<index])
                lineStart = index + 1
                if depthAtLineStart == 0, let member = member(declaredAt: line, rest: characters[(index + 1)...]) {
                    members.insert(member)
                }
                depthAtLineStart = depth
            }
            index += 1
        }
        return members
    }

    /// The member a line declares, if it is a public one; `rest` holds the
    /// lines after it, for parameter lists that go on.
    static func member(declaredAt line: String, rest: ArraySlice<Character>) -> String? {
        var words = line.split(separator: " ").map(String.init)
        guard words.first == "public" else { return nil }
        words.removeFirst()
        while let first = words.first, ["static", "convenience", "override", "final", "nonisolated"].contains(first) {
            words.removeFirst()
        }
        guard let keyword = words.first else { return nil }
        if keyword == "var" || keyword == "let" {
            return words.count > 1 ? String(words[1].prefix { $0.isLetter || $0.isNumber || $0 == "_" }) : nil
        }
        let name: String
        if keyword == "func", words.count > 1 {
            name = String(words[1].prefix { $0.isLetter || $0.isNumber || $0 == "_" })
        } else if keyword.hasPrefix("init") {
            name = "init"
        } else {
            return nil
        }
        // The parameter list: from the first "(" after the name to its match.
        let text = Array(line) + ["\n"] + rest
        guard let open = text.firstIndex(of: "(") else { return nil }
        var depth = 0
        var parameters: [String] = []
        var current = ""
        var index = open
        while index < text.count {
            let character = text[index]
            let isArrow = character == ">" && index > 0 && text[index - 1] == "-"
            if "([<".contains(character) { depth += 1 }
            if ")]>".contains(character) && !isArrow { depth -= 1 }
            if depth == 0 { break }
            if depth == 1 && character == "," {
                parameters.append(current)
                current = ""
            } else if !(depth == 1 && character == "(") {
                current.append(character)
            }
            index += 1
        }
        if !current.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { parameters.append(current) }
        let labels = parameters.compactMap { parameter -> String? in
            let head = parameter.split(separator: ":", maxSplits: 1)[0].split(whereSeparator: \.isWhitespace)
            guard let label = head.first else { return nil }
            return String(label)
        }
        // Which loop an async socket uses is the async level's own choice.
        .filter { $0 != "on" }
        return "\(name)(\(labels.map { "\($0):" }.joined()))"
    }
}
