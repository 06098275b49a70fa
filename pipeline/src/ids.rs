//! Small identifier types shared by every part of the data plane: plain data of `proto`,
//! re-exported here.

pub use proto::ids::{SaId, Spi};
