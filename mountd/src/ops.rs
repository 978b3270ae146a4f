//! ENTER/EXIT bookkeeping for every FUSE op.
//!
//! An [`Op`] is created when a request arrives and travels with its reply: for a read that
//! is parked, it is stored next to the reply and only ends when the data path answers.
//! Dropping it records EXIT with the duration. This is the single hook through which op
//! visibility (spans, the in-flight registry, the stall watchdog) is attached, so every op
//! gets it the same way.

use std::time::Instant;

/// One FUSE request from arrival to reply.
#[derive(Debug)]
pub struct Op {
    kind: &'static str,
    unique: u64,
    started: Instant,
    span: tracing::Span,
}

impl Op {
    /// Records ENTER. `span` carries the op's fields (ino, fh, offset, ...).
    pub fn enter(kind: &'static str, unique: u64, span: tracing::Span) -> Op {
        tracing::trace!(parent: &span, op = kind, unique, "ENTER");
        Op {
            kind,
            unique,
            started: Instant::now(),
            span,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        tracing::trace!(
            parent: &self.span,
            op = self.kind,
            unique = self.unique,
            dur_us = self.started.elapsed().as_micros() as u64,
            "EXIT"
        );
    }
}
