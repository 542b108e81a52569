//! Offline evaluation of a trained decoder (`hyper-rt eval`): the test trials decoded and their reconstructions drawn
//! by the generator, HYPER's measures with permutation nulls ([`eval`]), and the report's plots ([`plots`]). It
//! stands above `generate` and `display` because it draws images; the measures themselves are
//! [`crate::decode::metrics`]. The measures are specified in `docs/hyper.md`.

pub mod eval;
pub mod plots;
