// sqlx's `migrate!` embeds the migrations at compile time; without this, adding a
// migration file would not rebuild the crate and the binary would run the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
