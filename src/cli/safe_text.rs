//! Text from elsewhere, made safe to print: titles and messages (synced
//! from any device or typed on the web, or said by an LLM) get their
//! control characters escaped, so no text can move the cursor, recolor or
//! retitle the terminal, or reorder a line (bidirectional overrides);
//! URLs and errors get their passwords and `token=` values redacted.

use std::borrow::Cow;

/// Characters a terminal acts on: C0 and C1 controls, DEL, and the
/// bidirectional overrides and isolates.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| acts_on_terminal(c) && !keep.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if acts_on_terminal(c) && !keep.contains(&c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A text of several lines (a message): newlines and tabs kept, every
/// other control character escaped (`\u{1b}`).
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, &['\n', '\t'])
}

/// A text on one line (a title, a snippet): every control character
/// escaped, newlines too.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, &[])
}

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
];

/// `s` with the password of every `scheme://user:password@host` and the
/// value of every secret query parameter (`?token=…`, `&api_key=…`)
/// replaced by `***`.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    // Passwords in URLs.
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    // Secret query values.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find(['?', '&']) {
        let (before, after) = rest.split_at(i + 1);
        result.push_str(before);
        let name_end = after.find('=').unwrap_or(0);
        let name = &after[..name_end];
        if name_end > 0 && SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            result.push_str(name);
            result.push_str("=***");
            let value = &after[name_end + 1..];
            let value_end = value
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(value.len());
            rest = &value[value_end..];
        } else {
            rest = after;
        }
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(line("plain title"), "plain title");
        assert!(matches!(line("plain"), Cow::Borrowed(_)));
        assert_eq!(
            line("\x1b]0;pwned\x07title\nnext"),
            "\\u{1b}]0;pwned\\u{7}title\\u{a}next"
        );
        assert_eq!(
            text("two\nlines\tand \x1b[2J"),
            "two\nlines\tand \\u{1b}[2J"
        );
        assert_eq!(
            line("a\u{202E}b\u{9b}c\u{7f}"),
            "a\\u{202e}b\\u{9b}c\\u{7f}"
        );
        assert_eq!(text("héllo 😀"), "héllo 😀");
    }

    #[test]
    fn passwords_and_tokens_are_redacted() {
        assert_eq!(
            redact("wss://alice:s3cret@chat.example/ws?token=abc123&x=1"),
            "wss://alice:***@chat.example/ws?token=***&x=1"
        );
        assert_eq!(
            redact("url = \"http://u:p@h:8080/v1?api_key=K\"\nnext = \"ws://h/ws?a=b&Token=T\""),
            "url = \"http://u:***@h:8080/v1?api_key=***\"\nnext = \"ws://h/ws?a=b&Token=***\""
        );
        // Nothing to hide: unchanged.
        for s in [
            "ws://127.0.0.1:8080/ws",
            "http://user@host/x?monkey=1",
            "token_file = \"/etc/pichat/device.token\"",
            "cannot connect to tcp://[::1]:10300: refused",
        ] {
            assert_eq!(redact(s), s);
        }
    }
}
