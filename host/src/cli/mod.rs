//! Operator and developer commands beyond `eddy run`: the synthetic event generator
//! (`produce`), reading a subject (`tail`), and creating a pipeline's streams (`streams`).

pub mod produce;
pub mod streams;
pub mod tail;
