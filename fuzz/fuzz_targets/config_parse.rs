//! `sshlb::config::parse` on arbitrary text: it never panics, and an error says something and
//! names a line of the input (or 0, "not locatable").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file with `read_to_string`: text that is not UTF-8 never reaches
    // the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match sshlb::config::parse("fuzz.toml", text) {
        Ok(config) => {
            // What parsed once parses the same again (no hidden state).
            assert_eq!(sshlb::config::parse("fuzz.toml", text).ok(), Some(config));
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(!err.problem.to_string().is_empty(), "empty problem in {shown:?}");
            assert!(!err.field.is_empty(), "no field in {shown:?}");
            let lines = text.split('\n').count();
            assert!(err.line <= lines, "line {} of a {lines}-line input: {shown:?}", err.line);
            assert!(shown.starts_with(&format!("fuzz.toml:{}: ", err.line)), "{shown:?}");
        }
    }
});
