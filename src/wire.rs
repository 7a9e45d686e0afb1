//! The message envelope (skeleton: to be written).
