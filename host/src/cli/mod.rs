//! Operator and developer commands beyond `eddy run`: the synthetic event generator
//! (`produce`), reading a subject (`tail`), creating a pipeline's streams (`streams`), and the
//! operator commands on checkpoints, savepoints, deployments and state (`ops`).

pub mod ops;
pub mod produce;
pub mod streams;
pub mod tail;
