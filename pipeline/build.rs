//! Sets `cfg(ipsecmb)` when the `ipsecmb` feature is on and `ipsecmb-sys` found the library
//! (its `links` metadata `available`); without the library the pipeline builds with ring only.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ipsecmb)");
    println!("cargo:rerun-if-env-changed=DEP_IPSEC_MB_AVAILABLE");
    let feature = std::env::var_os("CARGO_FEATURE_IPSECMB").is_some();
    let found = std::env::var("DEP_IPSEC_MB_AVAILABLE").is_ok_and(|v| v == "1");
    if feature && found {
        println!("cargo:rustc-cfg=ipsecmb");
    }
}
