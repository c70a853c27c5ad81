//! Where a feed's files come from: a local directory (`DirTransport`; http is `crate::http`),
//! and what a rollout server's check-in reply offers. Releases themselves are verified through
//! the feed's TUF metadata (`crate::tuf_feed`); whether an offer is worth installing is the
//! core's decision, not made here.

use crate::ports::{FetchError, Offered, RolloutServer, SourceError, Transport};
use cairn_release::checkin::CheckIn;
use std::io::Read;
use std::path::PathBuf;

/// A feed in a local directory (air-gapped hosts, tests).
pub struct DirTransport(pub PathBuf);

impl Transport for DirTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        if !inside_feed(path) {
            return Err(SourceError::fetch(path)(FetchError::OutsideFeed));
        }
        let err = |e: std::io::Error| SourceError::fetch(path)(e.into());
        let mut f = std::fs::File::open(self.0.join(path)).map_err(err)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(err)?;
        Ok(Box::new(f))
    }
}

/// A relative path that stays inside the feed (no `..`, no empty components).
fn inside_feed(path: &str) -> bool {
    !path.split('/').any(|c| c == ".." || c.is_empty())
}

/// What a rollout server's check-in reply offers, or why nothing.
pub fn server_offer(server: &dyn RolloutServer, checkin: &CheckIn) -> Result<Offered, SourceError> {
    let reply = server.check_in(checkin)?;
    Ok(match reply.update {
        Some(offer) => Offered::Release(offer),
        None => Offered::Nothing(reply.reason.unwrap_or_else(|| "the server offers no update".into())),
    })
}
