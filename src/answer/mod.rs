//! What the proxy answers itself: its failures with their status, the
//! replies it builds, and the page a navigation gets when the dev box cannot
//! be reached.

pub(crate) mod error;
pub(crate) mod error_page;
pub(crate) mod reply;
