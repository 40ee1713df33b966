//! One JSON line per file argument: `{"file":…,"text":…,"pairs":[[k,v]…],"repr":…,"args":…}`,
//! with `repr` the guest's `repr(text)` and `args` its `repr(request.args)` for `text` as a
//! query; files that are not UTF-8 are skipped (the fuzz target skips them too).

use echo_core::json::push_string;
use echo_core::pyrepr::{immutable_multi_dict, push_str_repr};
use echo_core::query::{multi_items, parse_qsl};

fn main() {
    for file in std::env::args().skip(1) {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read `{file}`: {e}"));
        let Ok(text) = String::from_utf8(bytes) else { continue };
        let pairs = parse_qsl(&text);
        let mut repr = String::new();
        push_str_repr(&mut repr, &text);
        let mut line = String::from("{\"file\":");
        push_string(&mut line, &file);
        line.push_str(",\"text\":");
        push_string(&mut line, &text);
        line.push_str(",\"pairs\":[");
        for (i, (key, value)) in multi_items(&pairs).into_iter().enumerate() {
            line.push_str(if i > 0 { ",[" } else { "[" });
            push_string(&mut line, key);
            line.push(',');
            push_string(&mut line, value);
            line.push(']');
        }
        line.push_str("],\"repr\":");
        push_string(&mut line, &repr);
        line.push_str(",\"args\":");
        push_string(&mut line, &immutable_multi_dict(&pairs));
        line.push('}');
        println!("{line}");
    }
}
