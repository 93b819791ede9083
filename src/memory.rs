//! The daemon's resident memory. Code that ran once at start-up (config,
//! device discovery, engine set-up) stays mapped after it ran, and the
//! kernel maps code 64 KB around every page touched, so most of the
//! program's and its libraries' code counts as resident although the armed
//! loop runs a small part of it. [`release_unchanged_file_pages`] gives
//! those mappings back when the daemon goes idle; what runs again is mapped
//! again from the page cache on its next use (no disk read while it stays
//! cached, no data touched).
//!
//! Only mappings that are file-backed, not writable and hold no private
//! copy of any page (`Anonymous: 0 kB` in `/proc/self/smaps`) are released:
//! their pages are the file's bytes, so dropping them changes nothing but
//! residency. Writable data, relocated read-only data, the heap and stacks
//! are never touched.

use std::ffi::c_void;

/// Largest `/proc/self/smaps` read (a daemon has a few hundred mappings).
const MAX_SMAPS_BYTES: usize = 4 << 20;

/// A mapping that may be released: `start..end`.
#[derive(Debug, Clone, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The mappings of an smaps text that are file-backed, read-only and
/// unchanged from their file.
fn releasable(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The current mapping, if it is a candidate.
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A mapping's header: range perms offset dev inode [path].
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            current = (perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && path.starts_with('/')
                && end > start)
                .then_some(Mapping { start, end });
            continue;
        }
        if first == "Anonymous:" {
            let kb = fields.next().and_then(|v| v.parse::<u64>().ok());
            if let Some(m) = current.take()
                && kb == Some(0)
            {
                out.push(m);
            }
        }
    }
    out
}

/// Gives back the resident pages of unchanged read-only file mappings (the
/// code and constants of the program and its libraries); returns the bytes
/// of the mappings released. Cheap (one smaps read and a madvise per
/// mapping): call it when the daemon goes idle.
pub fn release_unchanged_file_pages() -> usize {
    use std::io::Read;
    let Ok(f) = std::fs::File::open("/proc/self/smaps") else {
        return 0;
    };
    let mut text = String::new();
    if f.take(MAX_SMAPS_BYTES as u64)
        .read_to_string(&mut text)
        .is_err()
        || text.len() >= MAX_SMAPS_BYTES
    {
        return 0;
    }
    let mut released = 0;
    for m in releasable(&text) {
        // SAFETY: the range is a whole private, read-only file mapping of
        // this process with no private page: after MADV_DONTNEED its pages
        // are read from the same file again, with the same bytes.
        let r =
            unsafe { libc::madvise(m.start as *mut c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if r == 0 {
            released += m.end - m.start;
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0200000 r--p 00000000 fe:01 123 /usr/bin/pichat
Size:               2048 kB
Rss:                1024 kB
Anonymous:             0 kB
55d0a0200000-55d0a0a00000 r-xp 00200000 fe:01 123 /usr/bin/pichat
Size:               8192 kB
Anonymous:             0 kB
55d0a0a00000-55d0a0a40000 r--p 00a00000 fe:01 123 /usr/bin/pichat
Size:                256 kB
Anonymous:           200 kB
55d0a0a40000-55d0a0a50000 rw-p 00a40000 fe:01 123 /usr/bin/pichat
Anonymous:            64 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           512 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00000000 00:00 0
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xs 00000000 fe:01 9 /dev/shm/x
Anonymous:             0 kB
";

    #[test]
    fn only_unchanged_private_read_only_file_mappings_are_released() {
        let m = releasable(SMAPS);
        assert_eq!(
            m,
            vec![
                Mapping {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0200000
                },
                Mapping {
                    start: 0x55d0a0200000,
                    end: 0x55d0a0a00000
                },
            ]
        );
        // Damaged text releases nothing.
        assert!(releasable("zz-yy r-xp 0 0 0 /a\nAnonymous: 0 kB\n").is_empty());
        assert!(releasable("10-20 r-xp 0 0 0 /a\nAnonymous: x kB\n").is_empty());
        assert!(releasable("20-10 r-xp 0 0 0 /a\nAnonymous: 0 kB\n").is_empty());
    }

    #[test]
    fn releasing_keeps_the_process_working_and_lowers_its_resident_code() {
        fn rss_file_kb() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        }
        let before = rss_file_kb();
        let released = release_unchanged_file_pages();
        assert!(released > 0);
        // Code still runs (faulted back in), data is intact.
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
        assert!(format!("{:?}", std::time::Duration::from_millis(1500)) == "1.5s");
        let after = rss_file_kb();
        assert!(after < before, "RssFile {before} kB -> {after} kB");
    }
}
