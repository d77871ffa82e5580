//! Batched receive: `recvmmsg(2)` into one reused buffer.
//!
//! One call drains a socket of up to [`BATCH`] datagrams; fewer than that means it was
//! empty, so an edge-triggered wake-up costs one receive syscall, not a read plus the
//! `EAGAIN` that proves the socket empty. Nothing is allocated per call.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use std::io::IoSliceMut;

/// Datagrams per call.
pub const BATCH: usize = 16;
/// Bytes per datagram slot: RTP, RTCP, STUN and DTLS records stay under a 1500-byte MTU;
/// anything longer is cut and counted as oversize.
pub const SLOT: usize = 2048;

/// One received datagram: its length in the buffer, its source, and whether it was cut.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Bytes in the slot.
    pub len: usize,
    /// Where it came from.
    pub src: Option<SocketAddr>,
    /// Longer than [`SLOT`]: cut by the kernel.
    pub truncated: bool,
}

/// The reusable state of batched receives (one per worker thread).
pub struct Receiver {
    headers: MultiHeaders<SockaddrStorage>,
    buf: Vec<u8>,
    meta: [Meta; BATCH],
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

fn std_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            headers: MultiHeaders::preallocate(BATCH, None),
            buf: vec![0; BATCH * SLOT],
            meta: [Meta {
                len: 0,
                src: None,
                truncated: false,
            }; BATCH],
        }
    }
}

impl Receiver {
    /// Receive what `fd` holds, up to [`BATCH`] datagrams, without blocking; 0 when it
    /// is empty.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut chunks = self.buf.chunks_exact_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let res = recvmmsg(
            fd,
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        );
        match res {
            Ok(results) => {
                let mut n = 0;
                for (m, r) in self.meta.iter_mut().zip(results) {
                    *m = Meta {
                        len: r.bytes,
                        src: r.address.as_ref().and_then(std_addr),
                        truncated: r.flags.contains(MsgFlags::MSG_TRUNC),
                    };
                    n += 1;
                }
                Ok(n)
            }
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Datagram `i` of the last [`recv`](Self::recv) and its metadata.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<(Meta, &[u8])> {
        let m = *self.meta.get(i)?;
        let start = i * SLOT;
        Some((m, self.buf.get(start..start + m.len.min(SLOT))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn drains_a_socket_in_one_call_and_reports_sources() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        for i in 0..5u8 {
            tx.send_to(&[i; 100], to).expect("send");
        }
        tx.send_to(&[9; SLOT + 10], to).expect("send big");
        let mut r = Receiver::default();
        // Loopback delivery is synchronous: all six are queued.
        assert_eq!(r.recv(rx.as_raw_fd()).expect("recv"), 6);
        for i in 0..5 {
            let (m, d) = r.get(i).expect("datagram");
            assert_eq!(
                (d, m.src, m.truncated),
                (&[i as u8; 100][..], tx.local_addr().ok(), false)
            );
        }
        let (m, d) = r.get(5).expect("big");
        assert!(m.truncated);
        assert_eq!(d.len(), SLOT);
        assert_eq!(r.recv(rx.as_raw_fd()).expect("empty"), 0);
    }
}
