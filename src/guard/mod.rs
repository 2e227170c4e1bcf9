//! The guard step, before the body is read: which client addresses may call (`clients`), how
//! often (`rate`), which browser origins (`cors`); after it, crawlers (`bots`), consent
//! (`consent`) and, in signed-cookie mode, who the visitor is (`identity`).

pub mod bots;
pub mod clients;
mod consent;
mod cors;
pub mod identity;
mod limits;
pub mod rate;

pub use bots::BotFilter;
pub use clients::{ClientPolicy, ForwardedHeader};
pub use consent::{ConsentPolicy, NoConsent};
pub use cors::{CorsPolicy, OriginCheck, OriginPattern};
pub use identity::IdentityPolicy;
pub use limits::Limits;
