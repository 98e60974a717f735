//! The status page's server-rendered part: the role's readiness and every `/api/` view
//! as plain HTML tables, so the page says something before (or without) its script,
//! in a screenshot, or in `curl`. The script replaces it with the live view.

use serde_json::Value;

/// Rows of one table at most; the rest is counted.
const MAX_ROWS: usize = 50;
/// Nesting rendered at most; deeper values are shown as JSON text.
const MAX_DEPTH: usize = 3;

/// The page's summary: readiness, then one section per view.
pub(super) fn render(role: &str, ready: &Result<(), String>, views: &[(&str, Value)]) -> String {
    let mut html = format!("<p id=\"summary-role\">{}: ", escape(role));
    match ready {
        Ok(()) => html.push_str("<span class=\"good\">ready</span>"),
        Err(reason) => {
            html.push_str(&format!(
                "<span class=\"bad\">not ready: {}</span>",
                escape(reason)
            ));
        }
    }
    html.push_str("</p>");
    for (name, value) in views {
        html.push_str(&format!("<h2>{}</h2>", escape(name)));
        html.push_str(&value_html(value, 0));
    }
    html
}

fn value_html(value: &Value, depth: usize) -> String {
    match value {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            table(items, depth)
        }
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Object(fields) if depth < MAX_DEPTH => {
            let rows: String = fields
                .iter()
                .map(|(key, value)| {
                    format!(
                        "<tr><th>{}</th><td>{}</td></tr>",
                        escape(key),
                        value_html(value, depth + 1)
                    )
                })
                .collect();
            format!("<table>{rows}</table>")
        }
        Value::String(text) => escape(text),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// An array of objects as one table; columns are the keys of the first rows.
fn table(items: &[Value], depth: usize) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for item in items.iter().take(MAX_ROWS) {
        for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let head: String = columns
        .iter()
        .map(|c| format!("<th>{}</th>", escape(c)))
        .collect();
    let rows: String = items
        .iter()
        .take(MAX_ROWS)
        .map(|item| {
            let cells: String = columns
                .iter()
                .map(|c| format!("<td>{}</td>", value_html(&item[*c], depth + 1)))
                .collect();
            format!("<tr>{cells}</tr>")
        })
        .collect();
    let more = items.len().saturating_sub(MAX_ROWS);
    let more = if more > 0 {
        format!("<p>and {more} more</p>")
    } else {
        String::new()
    };
    format!("<table><tr>{head}</tr>{rows}</table>{more}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_become_escaped_tables() {
        let view = serde_json::json!({
            "pools": [{ "pool_handle": "<Web>", "pool_elements": [{ "id": 1 }, { "id": 2 }] }],
            "synchronized": true,
        });
        let html = render(
            "registrar",
            &Err("synchronizing".into()),
            &[("handlespace", view)],
        );
        assert!(html.contains("not ready: synchronizing"), "{html}");
        assert!(html.contains("<td>&lt;Web&gt;</td>"), "{html}");
        assert!(
            html.contains("<th>synchronized</th><td>true</td>"),
            "{html}"
        );
        assert!(!html.contains("<Web>"), "{html}");
    }
}
