//! # conc-quic
//!
//! The QUIC transport for conc (quinn + rustls). Work in progress: see `Quic`.

/// The QUIC transport.
#[derive(Debug, Default)]
pub struct Quic;

impl Quic {
    /// A QUIC transport with default settings.
    pub fn new() -> Quic {
        Quic
    }
}
