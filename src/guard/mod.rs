//! The guard step, before the body is read: which client addresses may call (`clients`), how
//! often (`rate`), and which browser origins (`cors`).

pub mod bots;
pub mod clients;
mod consent;
mod cors;
pub mod rate;

pub use bots::BotFilter;
pub use clients::{ClientPolicy, ForwardedHeader};
pub use consent::{ConsentPolicy, NoConsent};
pub use cors::{CorsPolicy, OriginCheck, OriginPattern};
