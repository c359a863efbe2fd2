//! One socket: non-blocking reads into the loop's shared buffer, vectored writes of
//! an engine's output, and the lingering close after the engine is done.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::Connection;

/// At most this many slices go into one `writev`.
const MAX_IOVECS: usize = 64;

/// The result of one read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read1 {
    /// `n` bytes are in the buffer.
    Data(usize),
    /// Nothing more right now.
    WouldBlock,
    /// The peer ended its stream, or the socket failed.
    Eof,
}

/// A TCP stream and the I/O state the loop keeps for it.
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    /// After the engine is closed and its output flushed, our write side is shut and
    /// we read (and discard) until the peer closes, so that our close frame is not lost
    /// to a reset caused by unread data (a "lingering close").
    pub(crate) lingering: bool,
    /// The peer ended its stream or the socket failed.
    pub(crate) eof: bool,
    /// WRITABLE interest is registered (only while output is pending).
    pub(crate) want_write: bool,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream, lingering: false, eof: false, want_write: false }
    }

    /// One read, retrying on `Interrupted`.
    pub(crate) fn read_once(&mut self, buf: &mut [u8]) -> Read1 {
        loop {
            match self.stream.read(buf) {
                Ok(0) => break,
                Ok(n) => return Read1::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.eof = true;
        Read1::Eof
    }

    /// Writes the engine's output until it is empty or the socket would block; one
    /// `writev` carries every queued run. `Err` only for a broken socket.
    pub(crate) fn flush(&mut self, engine: &mut Connection) -> io::Result<()> {
        while engine.bytes_to_write() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = engine.output_vectored(&mut slices);
            let written = if n == 1 { self.stream.write(&slices[0]) } else { self.stream.write_vectored(&slices[..n]) };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => engine.consume_output(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts the lingering close: no more writes; wait for the peer's FIN.
    pub(crate) fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.lingering = true;
    }
}
