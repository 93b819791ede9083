//! Cuts a streamed LLM reply into sentences, so each can be spoken as soon
//! as it is complete, while the LLM is still writing. Pure text logic.
//!
//! A sentence ends at `.`, `!`, `?`, `…` or a line break, once the next
//! character shows it really ended (whitespace then not a digit). Not ends:
//! decimals (`3.14`), abbreviations (`e.g.`, `Dr.`), initials (`J. R.`),
//! list numbers (`1. `). Pieces longer than the maximum are cut at the last
//! comma or space. What is left when the reply ends is the last sentence.

/// Abbreviations that do not end a sentence (lowercase, without the dot).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "eg", "ie",
    "approx", "no", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "mt", "inc", "ltd", "co",
];

#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    pending: String,
    max_chars: usize,
}

impl SentenceSplitter {
    pub fn new(max_chars: usize) -> Self {
        SentenceSplitter {
            pending: String::new(),
            max_chars: max_chars.max(20),
        }
    }

    /// Adds streamed text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.boundary() {
            let s: String = self.pending.drain(..end).collect();
            push_clean(&mut out, &s);
        }
        while self.pending.chars().count() > self.max_chars {
            let cut = self.long_cut();
            let s: String = self.pending.drain(..cut).collect();
            push_clean(&mut out, &s);
        }
        out
    }

    /// The end of the reply: whatever is left.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.pending);
        let c = speakable(&s);
        (!c.is_empty()).then_some(c)
    }

    /// Byte index just after the first confirmed sentence end, if any.
    fn boundary(&self) -> Option<usize> {
        let p = &self.pending;
        let chars: Vec<(usize, char)> = p.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            if c == '\n' {
                if p[..i].trim().is_empty() {
                    continue;
                }
                return Some(i + 1);
            }
            if !matches!(c, '.' | '!' | '?' | '…') {
                continue;
            }
            // Closing quotes or brackets stay with the sentence.
            let mut j = k + 1;
            while j < chars.len()
                && matches!(
                    chars[j].1,
                    '"' | '\'' | ')' | ']' | '”' | '’' | '.' | '!' | '?'
                )
            {
                j += 1;
            }
            let Some(&(ni, next)) = chars.get(j) else {
                return None; // wait for the next token
            };
            if !next.is_whitespace() {
                continue; // 3.14, e.g.x, "...word"
            }
            if c == '.' && !self.is_real_stop(&p[..i]) {
                continue;
            }
            return Some(ni);
        }
        None
    }

    /// False when the word before a dot is an abbreviation, an initial or a
    /// list number.
    fn is_real_stop(&self, before: &str) -> bool {
        let word = before
            .rsplit(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap_or("");
        let lower = word.to_lowercase();
        if ABBREVIATIONS.contains(&lower.as_str()) {
            return false;
        }
        // A single capital letter: an initial (J. R. R. Tolkien).
        let mut cs = word.chars();
        if let (Some(c), None) = (cs.next(), cs.next())
            && c.is_uppercase()
        {
            return false;
        }
        // "1." at the start of a line or of the text: a list number.
        if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit()) {
            let line = before.rsplit('\n').next().unwrap_or(before);
            if line.trim() == word {
                return false;
            }
        }
        true
    }

    /// Where to cut an over-long piece: after the last comma, semicolon,
    /// colon or dash within the limit, else the last space, else the limit.
    fn long_cut(&self) -> usize {
        let limit = self
            .pending
            .char_indices()
            .nth(self.max_chars)
            .map(|(i, _)| i)
            .unwrap_or(self.pending.len());
        let head = &self.pending[..limit];
        let min = limit / 3;
        if let Some(i) = head.rfind([',', ';', ':', '—', '–']).filter(|&i| i > min) {
            return i + head[i..].chars().next().map(char::len_utf8).unwrap_or(1);
        }
        if let Some(i) = head.rfind(' ').filter(|&i| i > min) {
            return i + 1;
        }
        limit
    }
}

fn push_clean(out: &mut Vec<String>, s: &str) {
    let c = speakable(s);
    if !c.is_empty() {
        out.push(c);
    }
}

/// What TTS should read: markdown list markers, emphasis and headings
/// removed, whitespace collapsed. Empty when nothing speakable is left.
pub fn speakable(s: &str) -> String {
    let mut t = s.trim();
    // List markers and headings at the start of a piece.
    for prefix in ["- ", "* ", "• ", "# ", "## ", "### "] {
        if let Some(rest) = t.strip_prefix(prefix) {
            t = rest.trim_start();
        }
    }
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && digits <= 3 && t[digits..].starts_with(". ") {
        t = t[digits + 2..].trim_start();
    }
    let cleaned: String = t
        .chars()
        .filter(|c| !matches!(c, '*' | '_' | '`' | '#'))
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().any(|c| c.is_alphanumeric()) {
        collapsed
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in small tokens, as an LLM would, and collects sentences.
    fn split(text: &str, token_len: usize) -> Vec<String> {
        let mut s = SentenceSplitter::new(200);
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for chunk in chars.chunks(token_len) {
            out.extend(s.push(&chunk.iter().collect::<String>()));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn plain_sentences_any_token_size() {
        let text = "The capital of France is Paris. It is on the Seine! Want more? Sure…  Okay.";
        let want = vec![
            "The capital of France is Paris.",
            "It is on the Seine!",
            "Want more?",
            "Sure…",
            "Okay.",
        ];
        for n in [1, 2, 3, 7, 100] {
            assert_eq!(split(text, n), want, "token size {n}");
        }
    }

    #[test]
    fn decimals_abbreviations_initials() {
        assert_eq!(
            split("Pi is about 3.14 or so. Next.", 2),
            vec!["Pi is about 3.14 or so.", "Next."]
        );
        assert_eq!(
            split(
                "Fruit, e.g. apples, is good. Dr. Smith agrees. J. R. R. Tolkien wrote it.",
                3
            ),
            vec![
                "Fruit, e.g. apples, is good.",
                "Dr. Smith agrees.",
                "J. R. R. Tolkien wrote it."
            ]
        );
        assert_eq!(
            split("It costs $4.50 today.", 1),
            vec!["It costs $4.50 today."]
        );
    }

    #[test]
    fn lists_are_spoken_item_by_item() {
        let text = "Three fruits:\n1. Apples\n2. Bananas are yellow.\n3. Cherries\n\n**Enjoy!**";
        assert_eq!(
            split(text, 4),
            vec![
                "Three fruits:",
                "Apples",
                "Bananas are yellow.",
                "Cherries",
                "Enjoy!"
            ]
        );
        assert_eq!(split("- one\n- two", 2), vec!["one", "two"]);
    }

    #[test]
    fn no_final_punctuation_and_quotes() {
        assert_eq!(
            split("He said \"go.\" Then he left", 2),
            vec!["He said \"go.\"", "Then he left"]
        );
        assert_eq!(split("just words", 3), vec!["just words"]);
        assert!(split("  \n ", 1).is_empty());
        assert!(split("**", 1).is_empty());
    }

    #[test]
    fn long_pieces_are_cut_at_a_comma_or_space() {
        let mut s = SentenceSplitter::new(40);
        let text =
            "This sentence keeps going, and going without a stop, on and on and on until it ends";
        let mut out = s.push(text);
        out.extend(s.finish());
        assert!(out.len() >= 2, "{out:?}");
        assert!(out.iter().all(|p| p.chars().count() <= 40), "{out:?}");
        assert_eq!(out[0], "This sentence keeps going,");
        assert_eq!(out.join(" "), text);
    }
}
