//! `sqlx::migrate!` embeds the migration files when this crate compiles;
//! cargo does not know of them, so without this a new migration would be
//! missing from builds that reuse an earlier compile of the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
