//! Config documents from arbitrary text: loading answers with a config or with errors that
//! each name a field path, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SET").then(|| "x".to_owned());
    match attache_config::load_str(text, "fuzz.yaml", &env) {
        Ok(config) => {
            let _ = config.redacted();
        }
        Err(e) => assert!(!e.errors.is_empty(), "a failed load lists its errors"),
    }
});
