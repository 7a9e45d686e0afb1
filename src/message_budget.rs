//! A per-message budget of frames and bytes (issue 10, 0b).
//!
//! libzmq checks `ZMQ_MAXMSGSIZE` per frame only, so a hostile peer may send frames with MORE
//! set forever. A reader that sees the parts of a multipart message one by one (the forwarder)
//! feeds each part to a [`MessageBudget`]; once the message exceeds its frame count or its total
//! size the budget answers [`Verdict::Exceeded`] and the caller drops the rest of the message and
//! cuts the peer off. Pure logic, no I/O; the arithmetic saturates, so forged sizes cannot
//! overflow it.

/// The caps on one multipart message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// The most frames one message may have.
    pub max_frames: u32,
    /// The most bytes, summed over all frames, one message may have.
    pub max_bytes: u64,
}

impl Default for MessageLimits {
    /// 64 frames and 16 MiB: far above the envelope (a handful of frames) and any payload the
    /// fabric is meant for, far below what exhausts a node.
    fn default() -> Self {
        Self {
            max_frames: 64,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What the budget says about the frame just seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the caps; more frames of this message follow.
    Continue,
    /// Within the caps and the last frame: the message is complete, the budget is reset.
    Complete,
    /// This frame pushed the message over a cap; the budget stays exceeded until the message's
    /// last frame has been seen (so the caller can drain it) and then resets.
    Exceeded(Exceeded),
}

/// Which cap a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// More than `max_frames` frames.
    Frames,
    /// More than `max_bytes` bytes.
    Bytes,
}

impl Exceeded {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Exceeded::Frames => "frames",
            Exceeded::Bytes => "bytes",
        }
    }
}

/// Counts the frames and bytes of the message in progress.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    limits: MessageLimits,
    frames: u32,
    bytes: u64,
    exceeded: Option<Exceeded>,
}

impl MessageBudget {
    /// A budget for messages under `limits`.
    pub fn new(limits: MessageLimits) -> Self {
        Self {
            limits,
            frames: 0,
            bytes: 0,
            exceeded: None,
        }
    }

    /// Account one frame of `len` bytes; `more` is the frame's MORE flag.
    pub fn frame(&mut self, len: usize, more: bool) -> Verdict {
        self.frames = self.frames.saturating_add(1);
        self.bytes = self.bytes.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        if self.exceeded.is_none() {
            if self.frames > self.limits.max_frames {
                self.exceeded = Some(Exceeded::Frames);
            } else if self.bytes > self.limits.max_bytes {
                self.exceeded = Some(Exceeded::Bytes);
            }
        }
        let verdict = match self.exceeded {
            Some(why) => Verdict::Exceeded(why),
            None if more => Verdict::Continue,
            None => Verdict::Complete,
        };
        if !more {
            self.reset();
        }
        verdict
    }

    /// True while the message in progress is over a cap.
    pub fn is_exceeded(&self) -> bool {
        self.exceeded.is_some()
    }

    /// Forget the message in progress (the peer was cut off, or the message ended).
    pub fn reset(&mut self) {
        self.frames = 0;
        self.bytes = 0;
        self.exceeded = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_frames: u32, max_bytes: u64) -> MessageBudget {
        MessageBudget::new(MessageLimits {
            max_frames,
            max_bytes,
        })
    }

    #[test]
    fn a_message_within_the_caps_completes_and_resets() {
        let mut b = budget(3, 100);
        assert_eq!(b.frame(10, true), Verdict::Continue);
        assert_eq!(b.frame(10, true), Verdict::Continue);
        assert_eq!(b.frame(80, false), Verdict::Complete);
        // The next message starts from zero.
        assert_eq!(b.frame(100, false), Verdict::Complete);
    }

    #[test]
    fn more_forever_is_cut_at_the_frame_cap() {
        let mut b = budget(4, u64::MAX);
        let verdicts: Vec<_> = (0..6).map(|_| b.frame(0, true)).collect();
        assert_eq!(verdicts[..4], [Verdict::Continue; 4]);
        assert_eq!(verdicts[4], Verdict::Exceeded(Exceeded::Frames));
        assert_eq!(verdicts[5], Verdict::Exceeded(Exceeded::Frames));
        assert!(b.is_exceeded());
        // The last frame drains the message and the budget resets.
        assert_eq!(b.frame(0, false), Verdict::Exceeded(Exceeded::Frames));
        assert!(!b.is_exceeded());
        assert_eq!(b.frame(0, false), Verdict::Complete);
    }

    #[test]
    fn the_byte_cap_counts_the_sum_of_frames() {
        let mut b = budget(u32::MAX, 1024);
        assert_eq!(b.frame(512, true), Verdict::Continue);
        assert_eq!(b.frame(512, true), Verdict::Continue);
        assert_eq!(b.frame(1, true), Verdict::Exceeded(Exceeded::Bytes));
    }

    #[test]
    fn a_single_frame_over_the_byte_cap_is_exceeded() {
        let mut b = budget(8, 10);
        assert_eq!(b.frame(11, false), Verdict::Exceeded(Exceeded::Bytes));
        assert_eq!(b.frame(10, false), Verdict::Complete);
    }

    #[test]
    fn huge_sizes_saturate_instead_of_overflowing() {
        let mut b = budget(u32::MAX, u64::MAX);
        assert_eq!(b.frame(usize::MAX, true), Verdict::Continue);
        assert_eq!(b.frame(usize::MAX, true), Verdict::Continue);
        assert_eq!(b.frame(usize::MAX, false), Verdict::Complete);
    }

    #[test]
    fn reset_forgets_an_exceeded_message() {
        let mut b = budget(1, 100);
        b.frame(1, true);
        assert_eq!(b.frame(1, true), Verdict::Exceeded(Exceeded::Frames));
        b.reset();
        assert_eq!(b.frame(1, false), Verdict::Complete);
    }

    #[test]
    fn exceeded_labels_are_stable() {
        assert_eq!(Exceeded::Frames.as_str(), "frames");
        assert_eq!(Exceeded::Bytes.as_str(), "bytes");
    }
}
