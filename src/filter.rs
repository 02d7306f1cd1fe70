//! The file filter: decides which files forkhook watches.
//!
//! Owns the two filter sources and their union into one compiled regex: `FORKMON_FILTER`
//! (forkmon-compatible Lua patterns, translated here to regex syntax) and `FORKHOOK_FILTER`
//! (one native regex). Patterns are matched against absolute paths so that a filter such as
//! `^/home/` means the same whatever the program's working directory or however it spelled the
//! path, and as raw bytes because Unix paths need not be UTF-8 (and Lua patterns are
//! byte-oriented anyway, so the translation keeps Lua's C-locale byte semantics).

use regex::bytes::{Regex, RegexBuilder};
use std::fmt;

/// Lua's `LUA_MAXCAPTURES`: forkmon rejects patterns with more captures, so we do too.
const MAX_CAPTURES: usize = 32;

/// Which byte values one Lua pattern item matches; items are resolved to this before being
/// written out, which makes complements, empty ranges and regex escaping uniform.
type ByteSet = [bool; 256];

/// The compiled union of all filter patterns.
#[derive(Debug, Clone)]
pub struct Filter {
    matcher: Matcher,
    /// The union as one regex, for tests that check the shortcut against the engine.
    #[cfg(test)]
    pattern: String,
    /// A Lua pattern is anchored at the start (`^src/`). forkmon matched the name as the
    /// program passed it, so such a pattern is also tried on a relative name.
    anchored_lua: bool,
    /// The suffixes hold no `/` (and no pattern is anchored at the start): the name as
    /// the program passed it then decides a mismatch (see `rejects_name`).
    names_decide: bool,
    description: String,
}

/// `name.ends_with(suffix)`, compared byte by byte: a suffix is a few bytes, where
/// slice equality calls `memcmp` through the PLT, on every open and stat.
#[inline]
fn ends_with(name: &[u8], suffix: &[u8]) -> bool {
    name.len() >= suffix.len()
        && name[name.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a == b)
}

/// How a path is matched.
#[derive(Debug, Clone)]
enum Matcher {
    /// The whole filter means "the path ends with one of these" (`-e lua,py`,
    /// `%.lua$`): comparing bytes answers without the regex engine, on every open and
    /// stat the program makes. The regex is not even compiled: that took a third of
    /// the library's load (the compiler, and its queries of the CPU's features and of
    /// the cgroup's CPU quota).
    Suffixes(Vec<Vec<u8>>),
    Regex(Regex),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// A Lua pattern (from `FORKMON_FILTER`) that cannot be translated.
    LuaPattern { pattern: String, reason: String },
    /// A regex (from `FORKHOOK_FILTER`) that does not parse.
    Regex { pattern: String, reason: String },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::LuaPattern { pattern, reason } => {
                write!(f, "FORKMON_FILTER pattern '{pattern}': {reason}")
            }
            FilterError::Regex { pattern, reason } => {
                write!(f, "FORKHOOK_FILTER regex '{pattern}': {reason}")
            }
        }
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// None when neither source has a non-empty pattern.
    pub fn from_sources(
        lua_patterns: Option<&str>,
        regex: Option<&str>,
    ) -> Result<Option<Filter>, FilterError> {
        let lua: Vec<&str> = lua_patterns
            .unwrap_or("")
            .split(';')
            .filter(|p| !p.is_empty())
            .collect();
        let native = regex.filter(|r| !r.is_empty());

        let mut alternatives = Vec::with_capacity(lua.len() + 1);
        for &pattern in &lua {
            let translated = lua_to_regex(pattern).map_err(|reason| FilterError::LuaPattern {
                pattern: pattern.to_string(),
                reason,
            })?;
            alternatives.push(format!("(?:{translated})"));
        }
        let mut description = lua.join(";");
        // A native regex is checked alone first: inside the combined group an
        // unbalanced `)` could close the wrapper and silently change the meaning
        // instead of being reported. One that is a set of suffixes parsed already.
        let mut alone = None;
        // Parsed once: the whole filter when it is the native regex alone, the usual case.
        let native_suffixes = native.and_then(suffix_set);
        if let Some(native) = native {
            if native_suffixes.is_none() {
                alone = Some(build(native).map_err(|e| FilterError::Regex {
                    pattern: native.to_string(),
                    reason: one_line(&e),
                })?);
            }
            alternatives.push(format!("(?:{native})"));
            description = match lua.is_empty() {
                true => native.to_string(),
                false => format!("{description} ; {native}"),
            };
        }
        if alternatives.is_empty() {
            return Ok(None);
        }
        let pattern = match native {
            Some(native) if lua.is_empty() => native.to_string(),
            _ => alternatives.join("|"),
        };
        let suffixes = match native {
            Some(_) if lua.is_empty() => native_suffixes,
            _ => suffix_set(&pattern),
        };
        let matcher = match (suffixes, alone) {
            (Some(suffixes), _) => Matcher::Suffixes(suffixes),
            (None, Some(regex)) if lua.is_empty() => Matcher::Regex(regex),
            // Translations are valid by construction and the native regex compiled
            // alone, so only the size limit can fail here.
            (None, _) => Matcher::Regex(build(&pattern).map_err(|e| FilterError::LuaPattern {
                pattern: lua.join(";"),
                reason: format!("too large for one regex: {}", one_line(&e)),
            })?),
        };
        let anchored_lua = lua.iter().any(|p| p.starts_with('^'));
        let names_decide = !anchored_lua
            && matches!(&matcher, Matcher::Suffixes(all) if all.iter().all(|s| !s.contains(&b'/')));
        Ok(Some(Filter {
            matcher,
            #[cfg(test)]
            pattern,
            anchored_lua,
            names_decide,
            description,
        }))
    }

    /// Called for every file the program opens: no allocation beyond the regex's reused
    /// per-thread search cache.
    pub fn is_match(&self, path: &[u8]) -> bool {
        match &self.matcher {
            Matcher::Suffixes(suffixes) => suffixes.iter().any(|s| ends_with(path, s)),
            Matcher::Regex(regex) => regex.is_match(path),
        }
    }

    /// True when `name` (as the program passed it, relative or not) cannot match once
    /// made absolute: the filter is "ends with" literals that hold no `/`, and the name
    /// ends in a plain component, which its absolute form ends with too. False means
    /// "look at the absolute path", not "it matches".
    pub fn rejects_name(&self, name: &[u8]) -> bool {
        if !self.names_decide {
            return false;
        }
        // The last component must be a plain name: not empty, `.` or `..`.
        let plain_end = !matches!(
            name,
            [] | [.., b'/'] | [b'.'] | [.., b'/', b'.'] | [b'.', b'.'] | [.., b'/', b'.', b'.']
        );
        let Matcher::Suffixes(suffixes) = &self.matcher else {
            return false;
        };
        plain_end && !suffixes.iter().any(|s| ends_with(name, s))
    }

    /// Should a relative name be tried too, when its absolute form did not match?
    /// Only a Lua pattern anchored at the start can match the one and not the other.
    pub fn matches_relative_names(&self) -> bool {
        self.anchored_lua
    }

    /// What is being matched, for messages.
    pub fn describe(&self) -> &str {
        &self.description
    }
}

/// The literals `pattern` is equivalent to "ends with one of", if it is: its suffix
/// literals are exact (nothing else in the pattern), it is anchored at the end and at
/// nothing else. `None` for anything else, which the regex engine then answers.
fn suffix_set(pattern: &str) -> Option<Vec<Vec<u8>>> {
    if let Some(suffixes) = launcher_extensions(pattern) {
        return Some(suffixes);
    }
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::Look;
    let hir = parse(pattern)?;
    let props = hir.properties();
    let only_end = props.look_set().remove(Look::End).is_empty();
    if !only_end || !props.look_set_suffix().contains(Look::End) {
        return None;
    }
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Suffix);
    let seq = extractor.extract(&hir);
    if !seq.is_exact() {
        return None;
    }
    Some(
        seq.literals()?
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    )
}

/// The suffixes of a filter as `forkhook -e a,b` writes it, `\.(?:a|b)$` with plain
/// names (letters, digits, `_`), read without the regex parser: parsing took a third
/// of the library's constructor, in every program it is loaded into. Anything else is
/// for [`suffix_set`] to parse.
fn launcher_extensions(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let list = pattern.strip_prefix(r"\.(?:")?.strip_suffix(")$")?;
    list.split('|')
        .map(|ext| {
            let plain =
                !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            plain.then(|| [b".", ext.as_bytes()].concat())
        })
        .collect()
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    // Default limits comfortably fit hundreds of path patterns while bounding memory.
    RegexBuilder::new(pattern)
        .unicode(unicode_mode(pattern))
        .build()
}

/// Whether `pattern` is compiled in Unicode mode: yes, unless it asks for case-insensitive
/// matching (`(?i)`), which is ASCII-only here. Unicode's case tables (the regex crate's
/// `unicode-case`) are 70 KB of pointers that the dynamic loader would relocate, that is
/// write, in every program the library is loaded into: 18 pages, and as many in the
/// launcher. Without Unicode mode `.` matches any byte and `\w`, `\d`, `\s` are ASCII
/// classes; a non-ASCII letter in the pattern still matches itself.
fn unicode_mode(pattern: &str) -> bool {
    !matches!(parse_in(pattern, true), Parsed::NeedsAsciiMode)
}

/// How a pattern parses in one mode.
enum Parsed {
    Tree(regex_syntax::hir::Hir),
    /// It asks for Unicode case folding, which is left out (see [`unicode_mode`]).
    NeedsAsciiMode,
    Invalid,
}

/// `pattern` parsed as it is compiled (see [`unicode_mode`]), a second time only when
/// it must be in ASCII mode; `None` if it does not parse.
fn parse(pattern: &str) -> Option<regex_syntax::hir::Hir> {
    let parsed = match parse_in(pattern, true) {
        Parsed::NeedsAsciiMode => parse_in(pattern, false),
        parsed => parsed,
    };
    match parsed {
        Parsed::Tree(hir) => Some(hir),
        Parsed::NeedsAsciiMode | Parsed::Invalid => None,
    }
}

fn parse_in(pattern: &str, unicode: bool) -> Parsed {
    use regex_syntax::hir::ErrorKind;
    let parsed = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .unicode(unicode)
        .build()
        .parse(pattern);
    match parsed {
        Ok(hir) => Parsed::Tree(hir),
        Err(regex_syntax::Error::Translate(e))
            if *e.kind() == ErrorKind::UnicodeCaseUnavailable =>
        {
            Parsed::NeedsAsciiMode
        }
        Err(_) => Parsed::Invalid,
    }
}

/// Syntax errors render as several lines (pattern, caret, message); our message already names
/// the pattern, so keep just the message.
fn one_line(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        Some(message) => message.to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Translate one Lua pattern to regex syntax.
pub fn lua_to_regex(pattern: &str) -> Result<String, String> {
    let p = pattern.as_bytes();
    // string.find does a plain substring search when none of these occur, which makes e.g. a
    // lone unbalanced `)` literal rather than an error.
    if !p.iter().any(|b| b"^$*+?.([%-".contains(b)) {
        return Ok(p.iter().map(|&b| literal(b)).collect());
    }
    let mut out = String::new();
    let mut i = 0;
    if p.first() == Some(&b'^') {
        out.push_str(r"\A");
        i = 1;
    }
    let (mut open, mut captures) = (0usize, 0usize);
    while i < p.len() {
        match (p[i], p.get(i + 1).copied()) {
            (b'(', next) => {
                captures += 1;
                if captures > MAX_CAPTURES {
                    return Err("too many captures".into());
                }
                if next == Some(b')') {
                    // A position capture matches the empty string.
                    i += 2;
                } else {
                    open += 1;
                    out.push_str("(?:");
                    i += 1;
                }
                continue;
            }
            (b')', _) => {
                if open == 0 {
                    return Err("invalid pattern capture (unbalanced ')')".into());
                }
                open -= 1;
                out.push(')');
                i += 1;
                continue;
            }
            (b'$', None) => {
                out.push_str(r"\z");
                break;
            }
            (b'%', Some(b'b')) => return Err(unsupported("%b (balanced match)")),
            (b'%', Some(b'f')) => return Err(unsupported("%f (frontier pattern)")),
            (b'%', Some(b'0')) => return Err("invalid capture index %0".into()),
            (b'%', Some(d @ b'1'..=b'9')) => {
                return Err(unsupported(&format!("%{} (back-reference)", char::from(d))));
            }
            _ => {}
        }
        // As in lstrlib's do_match, anything else is one single-byte item, and only then is a
        // quantifier looked for: so a quantifier with nothing before it is itself an item.
        let (set, next) = single_item(p, i)?;
        out.push_str(&set_to_regex(&set));
        i = next;
        let quantifier = match p.get(i) {
            Some(b'*') => "*",
            Some(b'+') => "+",
            Some(b'-') => "*?",
            Some(b'?') => "?",
            _ => continue,
        };
        out.push_str(quantifier);
        i += 1;
    }
    if open > 0 {
        return Err("unfinished capture (unbalanced '(')".into());
    }
    Ok(out)
}

fn unsupported(item: &str) -> String {
    format!(
        "{item} is not supported by forkhook (regex has no equivalent); \
         write the filter as a Rust regex in FORKHOOK_FILTER instead"
    )
}

/// One single-byte item starting at `i`: `.`, `%x`, a `[set]` or a literal byte.
fn single_item(p: &[u8], i: usize) -> Result<(ByteSet, usize), String> {
    match p[i] {
        b'.' => Ok(([true; 256], i + 1)),
        b'%' => match p.get(i + 1) {
            None => Err("malformed pattern (ends with '%')".into()),
            Some(&e) => Ok((escape(e)?, i + 2)),
        },
        b'[' => bracket_set(p, i),
        b => Ok((single(b), i + 1)),
    }
}

/// Mirrors lstrlib's classEnd and matchbracketclass, quirks included: the first byte after `[`
/// or `[^` never closes the set (`[]]`), a `-` at either end is literal, and a range's upper
/// bound is taken raw even if it is `%`.
fn bracket_set(p: &[u8], open: usize) -> Result<(ByteSet, usize), String> {
    let negate = p.get(open + 1) == Some(&b'^');
    let start = open + 1 + usize::from(negate);
    let mut end = start;
    loop {
        let Some(&b) = p.get(end) else {
            return Err("malformed pattern (missing ']')".into());
        };
        end += 1;
        if b == b'%' && end < p.len() {
            end += 1;
        }
        if p.get(end) == Some(&b']') {
            break;
        }
    }
    let mut set = [false; 256];
    let mut j = start;
    while j < end {
        if p[j] == b'%' {
            // In bounds: p[end] is the closing `]`.
            for (member, e) in set.iter_mut().zip(escape(p[j + 1])?) {
                *member |= e;
            }
            j += 2;
        } else if j + 2 < end && p[j + 1] == b'-' {
            // A reversed range is empty, as in Lua, rather than a regex syntax error.
            (p[j]..=p[j + 2]).for_each(|b| set[usize::from(b)] = true);
            j += 3;
        } else {
            set[usize::from(p[j])] = true;
            j += 1;
        }
    }
    if negate {
        set.iter_mut().for_each(|m| *m = !*m);
    }
    Ok((set, end + 1))
}

/// `%e`: a character class, or `e` itself when not alphanumeric. Lua takes other letters and
/// digits literally too, but the manual leaves them undefined, so they are rejected as typos.
fn escape(e: u8) -> Result<ByteSet, String> {
    if let Some(set) = class_set(e) {
        Ok(set)
    } else if e.is_ascii_alphanumeric() {
        Err(format!(
            "malformed pattern (invalid escape '%{}')",
            e as char
        ))
    } else {
        Ok(single(e))
    }
}

/// C-locale `<ctype.h>` classes; an upper-case letter is the complement.
fn class_set(letter: u8) -> Option<ByteSet> {
    let test: fn(u8) -> bool = match letter.to_ascii_lowercase() {
        b'a' => |b| b.is_ascii_alphabetic(),
        b'c' => |b| b.is_ascii_control(),
        b'd' => |b| b.is_ascii_digit(),
        b'g' => |b| b.is_ascii_graphic(),
        b'l' => |b| b.is_ascii_lowercase(),
        b'p' => |b| b.is_ascii_punctuation(),
        // Rust's notion of ASCII whitespace omits the vertical tab that isspace includes.
        b's' => |b| b.is_ascii_whitespace() || b == 0x0B,
        b'u' => |b| b.is_ascii_uppercase(),
        b'w' => |b| b.is_ascii_alphanumeric(),
        b'x' => |b| b.is_ascii_hexdigit(),
        _ => return None,
    };
    let complement = letter.is_ascii_uppercase();
    Some(std::array::from_fn(|b| test(b as u8) != complement))
}

fn single(b: u8) -> ByteSet {
    let mut set = [false; 256];
    set[usize::from(b)] = true;
    set
}

/// Regex text matching exactly the bytes in `set`, with Unicode off so that `\xNN` and `.`
/// mean single bytes.
fn set_to_regex(set: &ByteSet) -> String {
    let count = set.iter().filter(|&&m| m).count();
    match count {
        0 => r"(?-u:[^\x00-\xFF])".into(),
        1 => literal(set.iter().position(|&m| m).unwrap_or(0) as u8),
        256 => "(?s-u:.)".into(),
        _ => {
            // Writing the smaller side keeps e.g. `[^%s]` readable.
            let negate = count > 128;
            let mut class = String::from(if negate { "(?-u:[^" } else { "(?-u:[" });
            let mut b = 0;
            while b < 256 {
                let first = b;
                while b < 256 && set[b] != negate {
                    b += 1;
                }
                if b > first {
                    class.push_str(&class_byte(first));
                }
                if b > first + 1 {
                    class.push('-');
                    class.push_str(&class_byte(b - 1));
                }
                b += 1;
            }
            class.push_str("])");
            class
        }
    }
}

/// Alphanumerics are never special in a regex class; everything else is written as `\xNN`
/// so that `-`, `^`, `]`, `\`, `&`, `~` and `[` need no case analysis.
fn class_byte(b: usize) -> String {
    let b = b as u8;
    if b.is_ascii_alphanumeric() {
        char::from(b).to_string()
    } else {
        format!(r"\x{b:02X}")
    }
}

fn literal(b: u8) -> String {
    if b.is_ascii_graphic() {
        regex::escape(char::from(b).encode_utf8(&mut [0; 4]))
    } else if b.is_ascii() {
        format!(r"\x{b:02X}")
    } else {
        format!(r"(?-u:\x{b:02X})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(pattern: &str) -> String {
        lua_to_regex(pattern).unwrap()
    }

    fn lua(patterns: &str) -> Filter {
        Filter::from_sources(Some(patterns), None).unwrap().unwrap()
    }

    /// Expectations checked against real Lua 5.4 `string.find` while writing them.
    fn check(pattern: &str, yes: &[&[u8]], no: &[&[u8]]) {
        let f = lua(pattern);
        for path in yes {
            assert!(f.is_match(path), "{pattern:?} should match {path:?}");
        }
        for path in no {
            assert!(!f.is_match(path), "{pattern:?} should not match {path:?}");
        }
    }

    fn members(class: &str) -> Vec<u8> {
        let f = lua(class);
        (0..=255u8).filter(|&c| f.is_match(&[c])).collect()
    }

    #[test]
    fn translates_common_items() {
        assert_eq!(tr("%.lua$"), r"\.lua\z");
        assert_eq!(tr("^/tmp/"), r"\A/tmp/");
        assert_eq!(tr("%%"), "%");
        assert_eq!(tr("%."), r"\.");
        assert_eq!(tr("a-"), "a*?");
        assert_eq!(tr("*foo"), r"\*foo");
        assert_eq!(tr("a**"), r"a*\*");
        assert_eq!(tr("%d+"), "(?-u:[0-9])+");
        assert_eq!(tr("[]]"), r"\]");
        assert_eq!(tr("[^%s]"), r"(?-u:[^\x09-\x0D\x20])");
        assert_eq!(tr("."), "(?s-u:.)");
        assert_eq!(tr("(a)()b"), "(?:a)b");
        assert_eq!(tr("a)"), r"a\)");
    }

    #[test]
    fn anchors() {
        check("%.lua$", &[b"/src/a.lua"], &[b"/a.lua.bak", b"/axlua"]);
        check("^/tmp/", &[b"/tmp/x"], &[b"/var/tmp/x"]);
        check("a^b$c$", &[b"/a^b$c"], &[b"/a^b$cd"]);
        check("^^", &[b"^x"], &[b"x^"]);
    }

    #[test]
    fn quantifiers() {
        check("[%w_]+%.py$", &[b"/x/my_mod2.py"], &[b"/x/.py"]);
        check("^a-$", &[b"", b"aaa"], &[b"aab"]);
        check("^ab?c$", &[b"ac", b"abc"], &[b"abbc"]);
        check("*foo", &[b"/*foo"], &[b"/foo"]);
        check("^a**$", &[b"aa*", b"*"], &[b"aa"]);
        check("^a***$", &[b"a***", b"aa"], &[b"a*b"]);
        check("%d+", &[b"/v42/"], &[b"/v/"]);
        // After a capture a quantifier is a literal item.
        check("(ab)+", &[b"ab+"], &[b"abab"]);
    }

    #[test]
    fn sets() {
        check("[]]", &[b"x]y"], &[b"xy"]);
        check("^[^]]$", &[b"a"], &[b"]"]);
        check("[^%s]", &[b" x "], &[b" \t\x0b "]);
        check("[a-]", &[b"-", b"a"], &[b"b"]);
        check("[%a-z]", &[b"-", b"Q"], &[b"^"]);
        check("[z-a]", &[], &[b"za-"]);
        check("[+--]", &[b","], &[b"."]);
        // Lua quirk: `%` ends the range, so the following `%` escapes the closing `]`.
        check("[x-%%]", &[b"]"], &[b"%", b"x"]);
        check("[\\^&~[]", &[b"\\", b"^", b"&", b"~", b"["], &[b"a"]);
        check("[^%s%S]", &[], &[b"anything"]);
    }

    #[test]
    fn every_ascii_byte_in_a_set_or_escaped_is_exact() {
        for b in (0u8..128).filter(|&b| !b"%^;".contains(&b)) {
            assert_eq!(members(&format!("[{}]", char::from(b))), [b]);
        }
        for b in (0u8..128).filter(|&b| !b.is_ascii_alphanumeric() && b != b';') {
            assert_eq!(members(&format!("%{}", char::from(b))), [b]);
        }
    }

    #[test]
    fn classes_are_c_locale() {
        assert_eq!(members("%s"), b"\t\n\x0b\x0c\r ");
        assert_eq!(members("%x"), b"0123456789ABCDEFabcdef");
        let sizes = ["%p", "%c", "%g", "%S", "%a", "%w", "%l", "%D"].map(|c| members(c).len());
        assert_eq!(sizes, [32, 33, 94, 250, 52, 62, 26, 246]);
        assert!(members("%A").contains(&0xFF) && members("%W").contains(&0x80));
        assert_eq!(members("[%l%u]"), members("%a"));
        assert_eq!(members("[%d%a]"), members("%w"));
    }

    #[test]
    fn bytes_not_text() {
        check("^a.b$", &[b"a\nb", b"a\xffb", b"a\0b"], &[b"ab"]);
        check("/[^/]+$", &[b"/dir/\xff\xfe"], &[b"/dir/"]);
        // Quantifiers apply to the last byte of a multi-byte character, as in Lua.
        check(
            "^é+$",
            &[b"\xc3\xa9", b"\xc3\xa9\xa9"],
            &[b"\xc3\xa9\xc3\xa9"],
        );
        check("^\x01 $", &[b"\x01 "], &[b"\x01"]);
    }

    #[test]
    fn errors() {
        for (pattern, needle) in [
            ("%b()", "%b (balanced match) is not supported"),
            ("%f[%w]", "%f (frontier pattern) is not supported"),
            ("(a)%1", "%1 (back-reference) is not supported"),
            ("%0", "invalid capture index"),
            ("%q", "invalid escape '%q'"),
            ("[%q]", "invalid escape"),
            ("[a", "missing ']'"),
            ("[]", "missing ']'"),
            ("[a%]", "missing ']'"),
            ("a%", "ends with '%'"),
            ("(a", "unfinished capture"),
            ("a).", "invalid pattern capture"),
        ] {
            let reason = lua_to_regex(pattern).unwrap_err();
            assert!(reason.contains(needle), "{pattern}: {reason}");
        }
        let too_many = "()".repeat(33);
        assert_eq!(lua_to_regex(&too_many).unwrap_err(), "too many captures");
        assert!(lua_to_regex(&"()".repeat(32)).is_ok());
    }

    #[test]
    fn error_messages_name_the_source() {
        let e = Filter::from_sources(Some("%.lua$;%b()"), None).unwrap_err();
        assert!(matches!(&e, FilterError::LuaPattern { pattern, .. } if pattern == "%b()"));
        let msg = e.to_string();
        assert!(msg.starts_with("FORKMON_FILTER pattern '%b()': %b (balanced match)"));
        assert!(msg.contains("FORKHOOK_FILTER") && !msg.contains('\n'));

        let e = Filter::from_sources(Some("%.lua$"), Some(r"\.(py")).unwrap_err();
        let (pattern, reason) = (r"\.(py".to_string(), "unclosed group".to_string());
        assert_eq!(e, FilterError::Regex { pattern, reason });
        let msg = e.to_string();
        assert_eq!(msg, r"FORKHOOK_FILTER regex '\.(py': unclosed group");
        // Would parse once wrapped in a group, so must be rejected on its own.
        assert!(Filter::from_sources(None, Some("a)|(?:b")).is_err());
    }

    #[test]
    fn sources_and_union() {
        assert!(Filter::from_sources(None, None).unwrap().is_none());
        assert!(Filter::from_sources(Some(";;"), Some(""))
            .unwrap()
            .is_none());
        assert_eq!(lua("a;;b;").describe(), "a;b");
        check("a;;b;", &[b"/a", b"/b"], &[b"/c"]);
        check("%.lua$;%.h$", &[b"/x.lua", b"/x.h"], &[b"/x.c"]);

        let f = Filter::from_sources(None, Some(r"\.(?:lua|py)$")).unwrap();
        let f = f.unwrap();
        assert_eq!(f.describe(), r"\.(?:lua|py)$");
        assert!(f.is_match(b"/x.py") && !f.is_match(b"/x.pyc"));

        let f = Filter::from_sources(Some("^/tmp/;%.h$"), Some(r"\.rs$")).unwrap();
        let f = f.unwrap();
        assert_eq!(f.describe(), r"^/tmp/;%.h$ ; \.rs$");
        for path in [&b"/tmp/x"[..], b"/src/a.h", b"/src/a.rs"] {
            assert!(f.is_match(path));
        }
        assert!(!f.is_match(b"/src/a.c"));
    }

    #[test]
    fn many_alternatives_fit() {
        let patterns: Vec<String> = (0..300).map(|i| format!("^/dir{i}/.-%.lua$")).collect();
        let f = lua(&patterns.join(";"));
        assert!(f.is_match(b"/dir299/a/b.lua") && !f.is_match(b"/dir300/b.lua"));
    }

    #[test]
    fn the_suffix_shortcut_agrees_with_the_regex() {
        let cases: [(Option<&str>, Option<&str>, bool); 9] = [
            (Some("%.lua$"), None, true),
            (None, Some(r"\.(?:lua|py)$"), true),
            (Some("%.lua$;%.h$"), Some(r"\.py$"), true),
            (None, Some(r"(?i)\.LUA$"), true),
            (None, Some(r"/src/"), false),
            (Some("^/tmp/.*%.lua$"), None, false),
            (None, Some(r"\.lua"), false),
            (None, Some(r"\b\.lua$"), false),
            (None, Some(r"[a-z]+\.lua$"), false),
        ];
        let paths: [&[u8]; 9] = [
            b"/a/b.lua",
            b"/a/b.LuA",
            b"/a/b.lua.bak",
            b"/tmp/x.py",
            b"/p/src/x.c",
            b"/a/b.h",
            b"lua",
            b"",
            b"/a/\xff.lua",
        ];
        for (lua, regex, shortcut) in cases {
            let filter = Filter::from_sources(lua, regex).unwrap().unwrap();
            let shortcut_taken = matches!(filter.matcher, Matcher::Suffixes(_));
            assert_eq!(shortcut_taken, shortcut, "{lua:?} {regex:?}");
            let regex = build(&filter.pattern).unwrap();
            for path in paths {
                assert_eq!(
                    filter.is_match(path),
                    regex.is_match(path),
                    "{lua:?} {regex:?} on {:?}",
                    String::from_utf8_lossy(path)
                );
            }
        }
    }

    #[test]
    fn the_launchers_filters_are_read_as_the_parser_reads_them() {
        for exts in [
            &["lua"][..],
            &["lua", "py"],
            &["h", "c", "H_2", "tar"],
            &["a", "a"],
        ] {
            let pattern = crate::launcher::filter_regex(
                &exts.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                &[],
            )
            .unwrap()
            .unwrap();
            let mut quick = launcher_extensions(&pattern).expect("read by hand");
            let hir = parse(&pattern).unwrap();
            let mut extractor = regex_syntax::hir::literal::Extractor::new();
            extractor.kind(regex_syntax::hir::literal::ExtractKind::Suffix);
            let seq = extractor.extract(&hir);
            assert!(seq.is_exact(), "{pattern}");
            let mut parsed: Vec<Vec<u8>> = seq
                .literals()
                .unwrap()
                .iter()
                .map(|l| l.as_bytes().to_vec())
                .collect();
            for v in [&mut quick, &mut parsed] {
                v.sort();
                v.dedup();
            }
            assert_eq!(quick, parsed, "{pattern}");
        }
        // Not the launcher's shape, or not plain names: for the parser.
        for pattern in [
            r"\.(?:lua)",
            r"\.(?:lua|)$",
            r"\.(?:a.b)$",
            r"\.(?:lu[a])$",
            r"x\.(?:lua)$",
            r"\.(?:lua)$|/src/",
            r"\.(?:lua)$)|(",
        ] {
            assert_eq!(launcher_extensions(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn a_name_is_rejected_only_when_its_absolute_form_cannot_match() {
        let ext = Filter::from_sources(None, Some(r"\.(?:lua|py)$"))
            .unwrap()
            .unwrap();
        assert!(ext.rejects_name(b"lib/x.c"));
        assert!(ext.rejects_name(b"/usr/lib/x.so"));
        assert!(ext.rejects_name(b"lua"));
        assert!(!ext.rejects_name(b"a/b.lua"), "it matches");
        assert!(
            !ext.rejects_name(b"a/b.py/."),
            "the absolute form is a/b.py"
        );
        assert!(!ext.rejects_name(b"x.lua/.."));
        assert!(!ext.rejects_name(b"dir/"));
        let slash = Filter::from_sources(None, Some(r"/src/a\.lua$"))
            .unwrap()
            .unwrap();
        assert!(
            !slash.rejects_name(b"a.lua"),
            "may be /x/src/a.lua once absolute"
        );
        let general = Filter::from_sources(None, Some(r"/src/")).unwrap().unwrap();
        assert!(
            !general.rejects_name(b"x.c"),
            "no shortcut for general patterns"
        );
    }

    #[test]
    fn only_start_anchored_lua_patterns_look_at_relative_names() {
        let f = |lua: &str| Filter::from_sources(Some(lua), None).unwrap().unwrap();
        assert!(f("^src/;%.h$").matches_relative_names());
        assert!(!f("%.lua$").matches_relative_names());
        let r = Filter::from_sources(None, Some("^src/")).unwrap().unwrap();
        assert!(!r.matches_relative_names(), "regexes match absolute paths");
    }

    #[test]
    fn case_insensitive_patterns_fold_ascii_letters() {
        let f = |regex: &str| Filter::from_sources(None, Some(regex)).unwrap().unwrap();
        let insensitive = f(r"(?i)/src/.*\.LUA$");
        assert!(insensitive.is_match(b"/p/SRC/a/b.lua"));
        assert!(insensitive.is_match(b"/p/src/b.Lua"));
        assert!(!insensitive.is_match(b"/p/lib/b.lua"));
        // The suffix shortcut folds the same letters.
        let suffix = f(r"(?i)\.LUA$");
        assert!(suffix.is_match(b"/p/b.lua") && suffix.is_match(b"/p/b.LuA"));
        assert!(!suffix.rejects_name(b"b.lua"));
        // A non-ASCII letter matches itself, in either mode.
        let accented = f("(?i)caf\u{e9}/.*\\.txt$");
        assert!(accented.is_match("/p/CAF\u{e9}/menu.TXT".as_bytes()));
        assert!(!accented.is_match(b"/p/cafe/menu.txt"));
        let plain = f("caf\u{e9}/[^/]+\\.txt$");
        assert!(plain.is_match("/p/caf\u{e9}/menu.txt".as_bytes()));
        assert!(!plain.is_match(b"/p/cafe/menu.txt"));
        // Unicode classes stay Unicode when case is not folded.
        assert!(f(r"/\w+\.txt$").is_match("/p/\u{e9}t\u{e9}.txt".as_bytes()));
    }
}
