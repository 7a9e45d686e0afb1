//! Membership from a file of `tcp://IP:PORT` lines (skeleton: to be written).
