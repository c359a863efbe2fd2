//! Several loops in one process, one per thread ([`ServerGroup`]): each with its own
//! listener on the same address (`SO_REUSEPORT`: the kernel spreads new connections
//! over the listeners, with no acceptor thread and no lock), sharing the shutdown, the
//! connection limit and the counters. Handlers that span loops (the relay's rooms)
//! talk through each loop's [`crate::net::Inbox`] (see `bus.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::net::bus::MAX_LOOPS;
use crate::net::handler::Handler;
use crate::net::metrics::ServerStats;
use crate::net::server::{Server, ServerConfig, Shared, ShutdownHandle};

/// Shuts the group down when a loop's thread ends, however it ends (an error, a
/// panic): the other loops do not carry on half a server.
struct StopOnExit(ShutdownHandle);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// The backlog of each listener.
const BACKLOG: i32 = 1024;

/// `threads` server loops on one address, one per thread, each with its own handler.
/// One thread is a plain [`Server`] (its listener without `SO_REUSEPORT`). Several
/// loops need Linux; their port is checked free first, but once they listen, another
/// process of the same user could bind it too with `SO_REUSEPORT` and take a share of
/// the connections.
pub struct ServerGroup<H: Handler> {
    loops: Vec<Server<H>>,
    shared: Shared,
}

impl<H: Handler> std::fmt::Debug for ServerGroup<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerGroup").field("loops", &self.loops.len()).finish_non_exhaustive()
    }
}

/// A listener on `addr` that other listeners of this process may share (`SO_REUSEPORT`).
fn shared_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl<H: Handler + Send + 'static> ServerGroup<H> {
    /// Binds `threads` loops (at least 1) to `addr`; `handler(i)` makes loop `i`'s
    /// handler. Process-wide settings stay process-wide: the connection limit is
    /// shared, the memory budget ([`ServerConfig::max_total_memory`]) is split evenly
    /// over the loops, the admin address is served by loop 0 with every loop's
    /// counters summed.
    pub fn bind(addr: SocketAddr, cfg: ServerConfig, threads: usize, mut handler: impl FnMut(usize) -> H) -> io::Result<Self> {
        let threads = threads.max(1);
        if threads > MAX_LOOPS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("at most {MAX_LOOPS} loops")));
        }
        let shared = Shared::default();
        // A plain bind first: a port already taken (another relay) is an error, not a
        // silent share, and port 0 becomes the port every loop binds.
        let first = TcpListener::bind(addr)?;
        if threads == 1 {
            let server = Server::with_listener(first, cfg, handler(0), shared.clone())?;
            return Ok(Self { loops: vec![server], shared });
        }
        if !cfg!(target_os = "linux") {
            // Elsewhere SO_REUSEPORT does not spread connections (or lets another socket take the port).
            return Err(io::Error::new(io::ErrorKind::Unsupported, "several loops need Linux (SO_REUSEPORT)"));
        }
        let bound = first.local_addr()?;
        drop(first);
        let mut loops: Vec<Server<H>> = Vec::with_capacity(threads);
        for i in 0..threads {
            let listener = shared_listener(bound)?;
            let mut loop_cfg = cfg.clone();
            // Split evenly, but never below what one connection may pin (twice), so a
            // connection within its own budget can always be read.
            loop_cfg.max_total_memory = (cfg.max_total_memory / threads).max(2 * cfg.connection_budget());
            if i > 0 {
                loop_cfg.admin_listen = None;
            }
            loops.push(Server::with_listener(listener, loop_cfg, handler(i), shared.clone())?);
        }
        Ok(Self { loops, shared })
    }

    /// The address every loop listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.loops[0].local_addr()
    }

    /// The admin address (served by loop 0), if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.loops[0].admin_addr()
    }

    /// The loops, to set up before [`ServerGroup::run`] (their handlers, their inboxes).
    pub fn loops_mut(&mut self) -> &mut [Server<H>] {
        &mut self.loops
    }

    /// Each loop's counters (see [`ServerStats::sum`] for the process's).
    pub fn stats(&self) -> Vec<Arc<ServerStats>> {
        self.loops.iter().map(Server::stats).collect()
    }

    /// Stops every loop gracefully (each closes its clients with 1001).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shared.shutdown_handle(self.loops.iter().map(Server::waker).collect())
    }

    /// Runs every loop, loop 0 on this thread and the others on their own, until shut
    /// down; returns the first error. A loop that fails or panics shuts the others
    /// down gracefully.
    pub fn run(self) -> io::Result<()> {
        let stop = self.shutdown_handle();
        let mut loops = self.loops.into_iter();
        let Some(mut first) = loops.next() else { return Ok(()) };
        let mut others = Vec::new();
        for (i, mut server) in loops.enumerate() {
            let guard = StopOnExit(stop.clone());
            let spawned = thread::Builder::new().name(format!("loop-{}", i + 1)).spawn(move || {
                let _guard = guard;
                server.run()
            });
            match spawned {
                Ok(t) => others.push(t),
                Err(e) => {
                    stop.shutdown();
                    for t in others {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        let result = {
            let _guard = StopOnExit(stop);
            first.run()
        };
        others
            .into_iter()
            .fold(result, |result, t| result.and(t.join().unwrap_or_else(|_| Err(io::Error::other("a server loop panicked")))))
    }
}
