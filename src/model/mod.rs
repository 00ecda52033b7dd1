//! The pure model: persona files and the concrete tuning of a domain.

pub mod tuning;
