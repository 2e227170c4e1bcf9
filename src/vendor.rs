//! The vendor's wire constants, below every step that speaks to it or about it.

/// The content type the personalization API requires of a request.
pub const VENDOR_CONTENT_TYPE: &str = "application/vnd.treasuredata.v1+json";
