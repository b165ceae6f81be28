//! The table of heisenbug fixtures the heisenbug tests share: one row
//! per fixture. `tests/tests/heisenbug.rs` puts each through the
//! in-process trial, `tests/tests/heisenbug_hunt.rs` hunts each as
//! processes, as `fixtures/hunt.sh` does.

/// Calls macro `$each` with every heisenbug fixture, one row each:
/// `test_name: FixtureType,` (a type implementing
/// `deja_fixtures::heisenbug::Heisenbug`). A new fixture is one row here.
///
/// ```
/// macro_rules! names {
///     ($($test:ident: $fixture:ty,)*) => {
///         vec![$(<$fixture as deja_fixtures::heisenbug::Fixture>::NAME),*]
///     };
/// }
/// let names: Vec<&str> = deja_tests::heisenbugs!(names);
/// assert!(names.contains(&"double-charge"));
/// ```
#[macro_export]
macro_rules! heisenbugs {
    ($each:ident) => {
        $each! {
            double_charge: deja_fixtures::double_charge::DoubleCharge,
            lost_update: deja_fixtures::lost_update::LostUpdate,
            out_of_order: deja_fixtures::out_of_order::OutOfOrder,
            clock_edge: deja_fixtures::clock_edge::ClockEdge,
            timeout_cascade: deja_fixtures::timeout_cascade::TimeoutCascade,
            real_clients: deja_fixtures::resp::RespKv,
            last_item: deja_fixtures::last_item::LastItem,
        }
    };
}
