//! What a human reply asks for: unsubscribe, decline, or just a reply.

use super::lexicon::{is_latin_word_char, Hit};
use super::scan::char_floor;
use super::words::intents;
use super::Intent;

/// The strongest intent in the new text: unsubscribe beats declined ("not interested,
/// remove me" must suppress). English matches preceded by a negation ("I'm not
/// unsubscribing", "don't remove me") are skipped; other languages have no such check.
pub(super) fn read_intent(fresh: &str, fresh_low: &str) -> Option<(Intent, String)> {
    let mut best: Option<(Intent, Hit)> = None;
    for hit in intents().find_all(fresh_low) {
        let negatable = hit.pattern.is_ascii()
            && !hit.pattern.contains("not")
            && !hit.pattern.contains("n't")
            && !hit.pattern.starts_with("no ");
        if negatable && negated(fresh_low, hit.start) {
            continue;
        }
        let intent = if hit.label == "unsubscribe" {
            Intent::Unsubscribe
        } else {
            Intent::Declined
        };
        match best {
            Some((Intent::Unsubscribe, _)) => {}
            Some((Intent::Declined, _)) if intent == Intent::Declined => {}
            _ => best = Some((intent, hit)),
        }
    }
    let (intent, hit) = best?;
    // Quote the writer's own words when lower-casing kept the length, up to the end
    // of the word for prefix patterns ("désinscri*" → "désinscrire").
    let said = match fresh.get(hit.start..hit.end) {
        Some(_) if fresh.len() == fresh_low.len() => {
            let rest = &fresh[hit.end..];
            let more: usize = rest
                .chars()
                .take_while(|c| is_latin_word_char(*c))
                .map(char::len_utf8)
                .sum();
            &fresh[hit.start..hit.end + more]
        }
        _ => hit.pattern,
    };
    Some((intent, said.to_string()))
}

pub(super) fn negated(low: &str, start: usize) -> bool {
    let from = char_floor(low, start.saturating_sub(24));
    let before = &low[from..start];
    let before = before
        .rsplit(['.', '!', ';', '\n', ','])
        .next()
        .unwrap_or("");
    [
        "not ",
        "n't ",
        "never ",
        "no need to ",
        "don't want to ",
        "do not want to ",
    ]
    .iter()
    .any(|n| before.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::classify::scan::lower;

    #[test]
    fn intents_and_negation() {
        let cases = [
            (
                "Please remove me from your list.",
                Some(Intent::Unsubscribe),
            ),
            ("Not interested, thanks.", Some(Intent::Declined)),
            (
                "Not interested. Please stop emailing me.",
                Some(Intent::Unsubscribe),
            ),
            ("I am not unsubscribing, just send less.", None),
            ("Please don't remove me, I like these.", None),
            ("请不要再发邮件给我了", Some(Intent::Unsubscribe)),
            ("我们暂时不需要，谢谢", Some(Intent::Declined)),
            ("今後は配信停止でお願いします", Some(Intent::Unsubscribe)),
            ("Bitte keine E-Mails mehr.", Some(Intent::Unsubscribe)),
            ("Danke, kein Interesse.", Some(Intent::Declined)),
            ("Merci de me désinscrire.", Some(Intent::Unsubscribe)),
            ("Nous ne sommes pas intéressés.", Some(Intent::Declined)),
            ("Por favor, darme de baja.", Some(Intent::Unsubscribe)),
            ("No estamos interesados.", Some(Intent::Declined)),
            ("Quero cancelar inscrição.", Some(Intent::Unsubscribe)),
            ("Não temos interesse.", Some(Intent::Declined)),
            ("Cancellami dalla lista.", Some(Intent::Unsubscribe)),
            ("Non siamo interessati.", Some(Intent::Declined)),
            ("Graag uitschrijven.", Some(Intent::Unsubscribe)),
            ("Geen interesse.", Some(Intent::Declined)),
            ("Sounds great, let's talk Tuesday.", None),
        ];
        for (text, want) in cases {
            let got = read_intent(text, &lower(text)).map(|(i, _)| i);
            assert_eq!(got, want, "{text}");
        }
    }
}
