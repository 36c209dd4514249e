//! The components this binary knows: the workspace's own (every kind of every slot) plus the
//! example component crate. A third-party component crate plugs in with one line here (and one
//! line in `Cargo.toml`); nothing else in the workspace changes.

use vcp_model::Registry;

pub fn registry() -> Registry {
    let mut reg = vcp_model::standard_registry();
    // Component crates, one line each (`vcp new-component` adds its line below this one).
    vcp_example_refiner::register(&mut reg);
    reg
}
