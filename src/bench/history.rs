//! `pichat bench history`: builds a large history through the JSON import and
//! measures the store's hot paths on it.
//!
//! The text is drawn from a Zipf-distributed vocabulary, so word frequencies
//! look like natural language; search queries are two words of middling
//! frequency (ranks 100–1000), as people search.

use std::path::PathBuf;
use std::time::Instant;

use crate::bench::{Percentiles, ms};
use crate::history::export::{self, Export, ExportFormat, ExportedConversation};
use crate::history::{
    ArchivedFilter, Conversation, Cursor, ListQuery, Message, OpenOptions, Origin, Role, Store,
};
use crate::time;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the database
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Conversations they are spread over
    #[arg(long, default_value_t = 10_000)]
    conversations: usize,
    /// Timed repetitions of each query
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Directory for the database and the export file, both kept [default: a temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Random seed (the same seed builds the same history)
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const VOCABULARY: usize = 5000;
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "te", "su", "po", "ne", "vi", "da", "ge", "bu", "fo", "zi", "ha", "ju",
    "wa", "ye", "qui", "sto",
];

fn word(i: usize) -> String {
    let mut w = String::new();
    let mut n = i + SYLLABLES.len();
    while n > 0 {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    w
}

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for r in 1..=n {
            sum += 1.0 / r as f64;
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let x = rng.f64();
        self.cdf.partition_point(|&c| c < x).min(self.cdf.len() - 1)
    }
}

/// A UUIDv7 for a time, as clients make them.
fn v7(ms: i64, rng: &mut fastrand::Rng) -> String {
    let mut bytes = [0u8; 10];
    rng.fill(&mut bytes);
    uuid::Builder::from_unix_timestamp_millis(ms as u64, &bytes)
        .into_uuid()
        .to_string()
}

fn build(args: &Args, rng: &mut fastrand::Rng, words: &[String]) -> Export {
    let zipf = Zipf::new(words.len());
    let per_conv = (args.messages / args.conversations.max(1)).max(1);
    let start = time::now_ms() - 365 * 86_400_000;
    let mut convs = Vec::with_capacity(args.conversations);
    let mut made = 0;
    for ci in 0..args.conversations {
        let n = if ci + 1 == args.conversations {
            args.messages - made
        } else {
            per_conv.min(args.messages - made)
        };
        let created = start + rng.i64(0..365 * 86_400_000);
        let cid = v7(created, rng);
        let mut messages = Vec::with_capacity(n);
        let mut t = created;
        for mi in 0..n {
            t += rng.i64(1_000..120_000);
            let len = rng.usize(5..30);
            let mut content = String::with_capacity(len * 7);
            for k in 0..len {
                if k > 0 {
                    content.push(' ');
                }
                content.push_str(&words[zipf.sample(rng)]);
            }
            content.push('.');
            let assistant = mi % 2 == 1;
            messages.push(Message {
                id: v7(t, rng),
                conversation_id: cid.clone(),
                role: if assistant {
                    Role::Assistant
                } else {
                    Role::User
                },
                content,
                created_at: t,
                model_id: assistant.then(|| "smollm2".to_string()),
                tokens_used: assistant.then(|| rng.i64(10..200)),
                response_time_ms: assistant.then(|| rng.i64(200..3000)),
                is_audio: !assistant,
                origin: Origin::Voice,
                reply_to: None,
                metadata: serde_json::Value::Null,
                rev: 0,
            });
        }
        made += n;
        convs.push(ExportedConversation {
            conversation: Conversation {
                id: cid,
                title: format!("{} {}", words[zipf.sample(rng)], words[zipf.sample(rng)]),
                model_id: Some("smollm2".into()),
                user_id: None,
                created_at: created,
                updated_at: t,
                last_message_at: Some(t),
                message_count: n as i64,
                archived: rng.u8(..) < 20,
                metadata: serde_json::Value::Null,
                rev: 0,
            },
            messages,
        });
    }
    Export {
        format: export::FORMAT_NAME.into(),
        version: export::FORMAT_VERSION,
        exported_at: time::now_ms(),
        conversations: convs,
    }
}

fn timed<F: FnMut(usize)>(n: usize, mut f: F) -> Percentiles {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        v.push(t.elapsed());
    }
    Percentiles::new(v)
}

fn line(name: &str, p: &Percentiles, goal: &str) {
    println!(
        "{name:<28} p50 {:>10}  p99 {:>10}   goal {goal}",
        ms(p.p(50.0)),
        ms(p.p(99.0))
    );
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("pichat-bench-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let db = dir.join("bench-history.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let json_path = dir.join("bench-export.json");
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let words: Vec<String> = (0..VOCABULARY).map(word).collect();

    eprintln!(
        "building {} messages in {} conversations...",
        args.messages, args.conversations
    );
    let doc = build(&args, &mut rng, &words);
    std::fs::write(&json_path, export::render(&doc, ExportFormat::Json))?;
    drop(doc);
    let json_bytes = std::fs::metadata(&json_path)?.len();

    eprintln!(
        "importing {} ({:.0} MB)...",
        json_path.display(),
        json_bytes as f64 / 1e6
    );
    let mut store = Store::open(&db, &OpenOptions::default())?;
    let t0 = Instant::now();
    let report = store.import_file(&json_path)?;
    let total = t0.elapsed();
    anyhow::ensure!(
        report.messages_added == args.messages,
        "import stored {} messages",
        report.messages_added
    );
    if args.dir.is_none() {
        let _ = std::fs::remove_file(&json_path);
    }

    println!(
        "pichat bench history: {} messages, {} conversations, {}",
        args.messages,
        args.conversations,
        db.display()
    );
    println!(
        "{:<28} {:>10.0} messages/s  ({:.2} s from reading the file to commit)   goal >= 100000/s",
        "import (JSON file -> db)",
        args.messages as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
    );

    let queries: Vec<String> = (0..args.queries)
        .map(|_| {
            format!(
                "{} {}",
                words[rng.usize(100..1000)],
                words[rng.usize(100..1000)]
            )
        })
        .collect();
    // Warm the page cache the way a running daemon has it warm.
    for q in queries.iter().take(20) {
        store.search(q, None, 20)?;
    }
    let mut hits = 0usize;
    let p = timed(queries.len(), |i| {
        hits += store
            .search(&queries[i], None, 20)
            .map(|h| h.len())
            .unwrap_or(0);
    });
    line("search, 2 words, limit 20", &p, "p50 <= 5 ms");
    println!(
        "{:<28} {:.1} hits per query on average",
        "",
        hits as f64 / queries.len() as f64
    );

    let mut cursors: Vec<Cursor> = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_conversations(&ListQuery {
            filter: ArchivedFilter::All,
            limit: 1000,
            offset: 0,
            before,
        })?;
        cursors.extend(page.conversations.iter().map(|c| Cursor {
            activity_at: c.last_message_at.unwrap_or(c.created_at),
            id: c.id.clone(),
        }));
        match page.next.and_then(|n| Cursor::decode(&n)) {
            Some(c) => before = Some(c),
            None => break,
        }
    }
    let picks: Vec<usize> = (0..args.queries)
        .map(|_| rng.usize(..cursors.len()))
        .collect();
    let p = timed(picks.len(), |i| {
        let q = ListQuery {
            filter: ArchivedFilter::Active,
            limit: 20,
            offset: 0,
            before: Some(cursors[picks[i]].clone()),
        };
        let _ = store.list_conversations(&q);
    });
    line("list page (20, keyset)", &p, "p50 <= 1 ms");
    let p = timed(args.queries, |_| {
        let _ = store.list_conversations(&ListQuery {
            filter: ArchivedFilter::Active,
            limit: 20,
            offset: 0,
            before: None,
        });
    });
    line("list first page (20)", &p, "p50 <= 1 ms");

    let p = timed(picks.len(), |i| {
        let _ = store.context(
            &cursors[picks[i]].id,
            "You are a helpful voice assistant.",
            1500,
        );
    });
    line("context build (1500 tokens)", &p, "p50 <= 1 ms");

    store.checkpoint()?;
    let size = std::fs::metadata(&db)?.len();
    println!(
        "{:<28} {:.0} bytes per message ({:.1} MB for {} messages; export JSON was {:.0} bytes per message)",
        "on disk",
        size as f64 / args.messages as f64,
        size as f64 / 1e6,
        args.messages,
        json_bytes as f64 / args.messages as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_zipf_is_skewed() {
        let words: std::collections::HashSet<String> = (0..VOCABULARY).map(word).collect();
        assert_eq!(words.len(), VOCABULARY);
        let z = Zipf::new(1000);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut top = 0;
        for _ in 0..10_000 {
            if z.sample(&mut rng) < 10 {
                top += 1;
            }
        }
        // The 10 most common of 1000 words carry about 39% of the mass.
        assert!((3000..5000).contains(&top), "{top}");
    }
}
