//! The one seam between the state machine and permessage-deflate (RFC 7692): the
//! negotiation on both sides, compressing what we send, inflating what we receive,
//! and the memory it pins. The algorithms live in [`crate::proto::deflate`].
//!
//! Without the `deflate` feature [`Compression`] is an uninhabited type: nothing is ever
//! negotiated, every method is unreachable, and the state machine carries no `cfg`.

use crate::proto::config::Config;
use crate::proto::error::ProtocolError;
use crate::proto::handshake::{ClientHandshake, Negotiated};
use crate::proto::types::Role;

#[cfg(feature = "deflate")]
use crate::proto::deflate::{DeflateParams, InflateError, Session};

/// The negotiated permessage-deflate state of one connection.
#[cfg(feature = "deflate")]
#[derive(Debug)]
pub(crate) struct Compression(Session);

/// The negotiated permessage-deflate state of one connection (never, in this build).
#[cfg(not(feature = "deflate"))]
#[derive(Debug)]
pub(crate) enum Compression {}

#[cfg(feature = "deflate")]
impl Compression {
    /// Client: adds the permessage-deflate offer to the handshake, if deflate is on.
    pub(crate) fn offer(config: &Config, hs: ClientHandshake) -> ClientHandshake {
        match &config.deflate {
            Some(cfg) => hs.offer_deflate(cfg),
            None => hs,
        }
    }

    /// The compression state for what the handshake agreed, if it agreed on deflate.
    /// The compression level and minimum size come from `config` (the defaults when
    /// the handshake was negotiated elsewhere with deflate off in `config`).
    pub(crate) fn open(config: &Config, negotiated: &Negotiated, role: Role) -> Option<Box<Self>> {
        let params = negotiated.deflate?;
        let cfg = config.deflate.clone().unwrap_or_default();
        Some(Box::new(Self(Session::new(params, &cfg, role == Role::Server))))
    }

    /// The agreed parameters.
    pub(crate) fn params(&self) -> DeflateParams {
        self.0.params
    }

    /// Whether a server may queue a frame compressed alone with `window_bits` (see
    /// [`crate::SharedFrame::new_compressed`]): the client must expect no context
    /// takeover and allow a window at least that large.
    pub(crate) fn accepts_shared(&self, window_bits: u8) -> bool {
        let p = self.0.params;
        p.server_no_context_takeover && window_bits <= p.server_max_window_bits
    }

    /// Whether a message of `len` bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        self.0.wants(len)
    }

    /// Compresses a whole message; the result is valid until the next call.
    pub(crate) fn compress(&mut self, data: &[u8]) -> &[u8] {
        self.0.compress(data);
        &self.0.scratch
    }

    /// Unmasks `chunk` into the scratch buffer and inflates it onto `out`, which may
    /// hold at most `limit` more bytes of this message; returns the next mask offset.
    /// Past the limit: 1009 naming `max`, the configured message limit.
    pub(crate) fn inflate_masked(
        &mut self,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        mask_off: usize,
        out: &mut Vec<u8>,
        limit: usize,
        max: usize,
    ) -> Result<usize, ProtocolError> {
        self.0.scratch.clear();
        let off = crate::proto::mask::extend_unmasked(&mut self.0.scratch, chunk, mask, mask_off);
        self.0.inflate_scratch(out, limit).map_err(|e| inflate_error(e, max))?;
        Ok(off)
    }

    /// Ends a compressed message (the removed `00 00 ff ff` tail, §7.2.2).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize, max: usize) -> Result<(), ProtocolError> {
        self.0.finish(out, limit).map_err(|e| inflate_error(e, max))
    }

    /// Bytes the compression state pins.
    pub(crate) fn footprint(&self) -> usize {
        self.0.footprint()
    }

    /// The connection is over: frees the (de)compressor, keeps the parameters.
    pub(crate) fn release(&mut self) {
        self.0.release();
    }
}

#[cfg(feature = "deflate")]
fn inflate_error(e: InflateError, max: usize) -> ProtocolError {
    match e {
        InflateError::TooBig => ProtocolError::MessageTooBig { limit: max },
        InflateError::Corrupt => ProtocolError::InvalidCompressedData,
    }
}

#[cfg(not(feature = "deflate"))]
impl Compression {
    pub(crate) fn offer(_config: &Config, hs: ClientHandshake) -> ClientHandshake {
        hs
    }

    pub(crate) fn open(_config: &Config, _negotiated: &Negotiated, _role: Role) -> Option<Box<Self>> {
        None
    }

    pub(crate) fn accepts_shared(&self, _window_bits: u8) -> bool {
        match *self {}
    }

    pub(crate) fn wants(&self, _len: usize) -> bool {
        match *self {}
    }

    pub(crate) fn compress(&mut self, _data: &[u8]) -> &[u8] {
        match *self {}
    }

    pub(crate) fn inflate_masked(
        &mut self,
        _chunk: &[u8],
        _mask: Option<[u8; 4]>,
        _mask_off: usize,
        _out: &mut Vec<u8>,
        _limit: usize,
        _max: usize,
    ) -> Result<usize, ProtocolError> {
        match *self {}
    }

    pub(crate) fn finish(&mut self, _out: &mut Vec<u8>, _limit: usize, _max: usize) -> Result<(), ProtocolError> {
        match *self {}
    }

    pub(crate) fn footprint(&self) -> usize {
        match *self {}
    }

    pub(crate) fn release(&mut self) {
        match *self {}
    }
}
