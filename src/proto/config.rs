//! [`Config`]: every limit and timeout of a connection, each default with its reason.

use std::time::Duration;

/// How received data is handed to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Whole messages: fragments are reassembled ([`crate::Event::Text`],
    /// [`crate::Event::Binary`]). Qt's `textMessageReceived` / `binaryMessageReceived`.
    #[default]
    Messages,
    /// One event per data frame ([`crate::Event::Frame`]), with a flag for the last
    /// frame of a message. Qt's `textFrameReceived(frame, isLastFrame)`.
    Frames,
}

/// Limits and timeouts of one connection. Every size the peer controls is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest payload of a single received frame, in bytes (1009 beyond it).
    /// Default 16 MiB: as large as the message limit, so a message may come in one frame.
    pub max_frame_size: usize,
    /// Largest received message (sum of its fragments), in bytes (1009 beyond it).
    /// Default 16 MiB: ample for chat, feeds and games, yet a public server cannot be
    /// made to hold more than this per connection (Qt's 2 GiB default can).
    pub max_message_size: usize,
    /// Largest handshake head (request or response line plus headers), in bytes.
    /// Default 8 KiB, as common HTTP servers use; beyond it a server answers 431.
    pub max_handshake_size: usize,
    /// Most header lines in a handshake head. Default 64: browsers send about 15;
    /// beyond it a server answers 431.
    pub max_headers: usize,
    /// Time allowed from connection start to an open connection (request received
    /// and accepted, or response received). Default 10 s: long enough for slow
    /// mobile links, short enough that a slow-loris client cannot hold a slot.
    pub handshake_timeout: Option<Duration>,
    /// Time allowed for the peer to answer our close frame (and, for a client, for
    /// the server to close TCP afterwards, RFC 6455 §7.1.1). Default 5 s.
    pub close_timeout: Duration,
    /// Send a ping this often while open (keepalive). Default off.
    pub ping_interval: Option<Duration>,
    /// With keepalive, drop the connection (1006, nothing sent) when a ping gets no
    /// pong within this time. Default 20 s.
    pub pong_timeout: Duration,
    /// Drop the connection (1006, nothing sent) when nothing at all was received for
    /// this long while open. Default off; servers on the open internet should set it.
    pub idle_timeout: Option<Duration>,
    /// Deliver whole messages or single frames. Default [`Delivery::Messages`].
    pub delivery: Delivery,
    /// Server: hand plain HTTP requests (neither `Upgrade` nor `Sec-WebSocket-Key`:
    /// a browser opening the address, a health check) to the application as
    /// [`crate::Event::HttpRequest`], under the same head-size, header-count and
    /// handshake-time limits, instead of answering them 426 itself. Default off.
    pub plain_http: bool,
    /// permessage-deflate (RFC 7692): what a client offers or a server accepts.
    /// Default `None`: off.
    #[cfg(feature = "deflate")]
    pub deflate: Option<crate::proto::deflate::DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_handshake_size: 8 << 10,
            max_headers: 64,
            handshake_timeout: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(5),
            ping_interval: None,
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            delivery: Delivery::Messages,
            plain_http: false,
            #[cfg(feature = "deflate")]
            deflate: None,
        }
    }
}
