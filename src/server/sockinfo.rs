//! What the kernel knows about a connection's socket: how many bytes the
//! peer has acknowledged (`TCP_INFO`). A client that reads, however slowly,
//! acknowledges bytes; one that does not read stops at its receive window,
//! even while the server's send buffer still takes writes, or no longer
//! does (Linux wakes a writer only once half its buffer has drained, which
//! on a slow link can take long).

use std::os::fd::RawFd;

/// Bytes of `fd` the peer acknowledged so far; `None` when the kernel does
/// not say (not a TCP socket).
pub(crate) fn bytes_acked(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own;
    // `fd` is the socket of a connection that is alive while we ask.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.1 do not fill tcpi_bytes_acked.
    let filled = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    (r == 0 && len as usize >= filled).then_some(info.tcpi_bytes_acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn acknowledged_bytes_grow_as_the_peer_reads() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let before = bytes_acked(server.as_raw_fd()).unwrap();
        server.write_all(&[7u8; 10_000]).await.unwrap();
        let mut buf = vec![0u8; 10_000];
        client.read_exact(&mut buf).await.unwrap();
        // Acknowledged (loopback acks at once, but give it a moment).
        let mut acked = 0;
        for _ in 0..100 {
            acked = bytes_acked(server.as_raw_fd()).unwrap() - before;
            if acked >= 10_000 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(acked >= 10_000, "{acked}");
        assert_eq!(bytes_acked(-1), None);
    }
}
