//! `deja`: the shim a service links instead of tokio, std time and rand.
//!
//! Not built yet: the runtime arrives with the runtime issue. Today the
//! crate re-exports the event model it will record.
//!
//! ```
//! assert_eq!(deja::recorder::TaskId::MAIN.0, 0);
//! ```

pub use deja_recorder as recorder;
