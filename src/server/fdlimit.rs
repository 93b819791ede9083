//! Open files: every socket is a file descriptor, so the connection limits
//! must fit in `RLIMIT_NOFILE`. `pichat serve` raises its soft limit to the
//! hard one at start (the units set `LimitNOFILE=`, so under systemd both
//! are already equal), and [`fit`] lowers `max_connections` and
//! `max_handshakes` to what the limit allows, with a warning, instead of
//! failing `accept` with EMFILE once the limit is reached.

use super::options::ServerOptions;

/// Descriptors the server needs besides its sockets: standard streams, the
/// database and its WAL, the runtime, engine connections, log output.
pub const RESERVE: u64 = 64;

fn get() -> Option<libc::rlimit> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0).then_some(l)
}

/// The soft limit of open files now.
#[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on some targets
pub fn open_files_limit() -> Option<u64> {
    get().map(|l| l.rlim_cur as u64)
}

/// Raises the soft limit of open files to the hard limit; returns the
/// limit in force.
#[allow(clippy::unnecessary_cast)] // as above
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut l = get().ok_or_else(std::io::Error::last_os_error)?;
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur as u64)
}

/// Lowers the socket limits of `opts` to fit in `limit` open files; says
/// what it changed.
pub fn fit(opts: &mut ServerOptions, limit: u64) -> Option<String> {
    let available = limit.saturating_sub(RESERVE).max(2);
    let (conns, handshakes) = (opts.max_connections as u64, opts.max_handshakes as u64);
    if conns + handshakes <= available {
        return None;
    }
    let new_handshakes = handshakes.min((available / 8).max(1));
    let new_conns = conns.min(available - new_handshakes).max(1);
    let msg = format!(
        "the open-files limit is {limit}: server.max_connections lowered from {conns} to {new_conns} \
         and server.max_handshakes from {handshakes} to {new_handshakes} ({RESERVE} are kept for the \
         rest); raise LimitNOFILE= in the unit (or `ulimit -n`) to allow more"
    );
    opts.max_connections = new_conns as usize;
    opts.max_handshakes = new_handshakes as usize;
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_in_the_open_files() {
        let mut o = ServerOptions {
            max_connections: 10_000,
            max_handshakes: 512,
            ..ServerOptions::default()
        };
        // At the limit: nothing changes.
        assert!(fit(&mut o, 10_000 + 512 + RESERVE).is_none());
        assert_eq!((o.max_connections, o.max_handshakes), (10_000, 512));
        // One past it: both fit, and the warning says where to raise it.
        let w = fit(&mut o, 10_000 + 512 + RESERVE - 1).unwrap();
        assert!(w.contains("LimitNOFILE="), "{w}");
        assert!(o.max_connections + o.max_handshakes <= 10_000 + 511);
        let mut o = ServerOptions::default();
        fit(&mut o, 1024).unwrap();
        assert_eq!(
            (o.max_connections, o.max_handshakes),
            (1024 - 64 - 120, 120)
        );
        let mut o = ServerOptions::default();
        fit(&mut o, 10).unwrap();
        assert!(o.max_connections >= 1 && o.max_handshakes >= 1);
    }
}
