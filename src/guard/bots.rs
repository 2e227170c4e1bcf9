//! Crawlers, by their `User-Agent`: answered here with the vendor's "200 without payload", never
//! forwarded, never spooled, never counted against the quota. Crawlers would otherwise spend the
//! customer's ingestion quota and fill profiles with visits nobody made. A service's patterns
//! are the shipped list (`DEFAULT_PATTERNS`, unless turned off) and its own; names in `exempt`
//! (a monitoring agent that should reach the upstream, say) are never filtered. Matching is
//! case-insensitive substring search, all patterns in one pass (aho-corasick), on at most the
//! first `MAX_SCANNED` bytes of the header.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Well-known crawlers and fetchers, as they name themselves.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "googlebot",
    "adsbot-google",
    "mediapartners-google",
    "google-inspectiontool",
    "bingbot",
    "bingpreview",
    "slurp",
    "duckduckbot",
    "baiduspider",
    "yandexbot",
    "applebot",
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "petalbot",
    "ahrefsbot",
    "semrushbot",
    "mj12bot",
    "dotbot",
    "gptbot",
    "ccbot",
    "bytespider",
    "amazonbot",
];

/// Bytes of the `User-Agent` looked at: real agents are shorter; a longer header costs no more.
pub const MAX_SCANNED: usize = 512;

/// A service's filter.
#[derive(Debug, Clone)]
pub struct BotFilter {
    patterns: Option<AhoCorasick>,
    exempt: Option<AhoCorasick>,
}

impl BotFilter {
    /// Patterns and exemptions are matched anywhere in the agent, in any case; empty ones are
    /// refused by validation before this.
    pub fn new(defaults: bool, patterns: &[String], exempt: &[String]) -> BotFilter {
        let shipped: &[&str] = if defaults { DEFAULT_PATTERNS } else { &[] };
        let all: Vec<&str> = shipped
            .iter()
            .copied()
            .chain(patterns.iter().map(String::as_str))
            .collect();
        BotFilter {
            patterns: searcher(&all),
            exempt: searcher(&exempt.iter().map(String::as_str).collect::<Vec<_>>()),
        }
    }

    /// A filter that lets every agent through.
    pub fn off() -> BotFilter {
        BotFilter {
            patterns: None,
            exempt: None,
        }
    }

    /// Whether `user_agent` names a crawler, and no exemption.
    pub fn is_bot(&self, user_agent: &[u8]) -> bool {
        let agent = &user_agent[..user_agent.len().min(MAX_SCANNED)];
        let Some(patterns) = &self.patterns else {
            return false;
        };
        patterns.is_match(agent) && !self.exempt.as_ref().is_some_and(|e| e.is_match(agent))
    }
}

fn searcher(patterns: &[&str]) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    let built = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(patterns);
    Some(built.expect("a handful of short literal patterns always builds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real agent string for each shipped pattern.
    const AGENTS: &[(&str, &str)] = &[
        ("googlebot", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        ("adsbot-google", "AdsBot-Google (+http://www.google.com/adsbot.html)"),
        ("mediapartners-google", "Mediapartners-Google"),
        ("google-inspectiontool", "Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)"),
        ("bingbot", "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"),
        ("bingpreview", "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 BingPreview/1.0b"),
        ("slurp", "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)"),
        ("duckduckbot", "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)"),
        ("baiduspider", "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)"),
        ("yandexbot", "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)"),
        ("applebot", "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1)"),
        ("facebookexternalhit", "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
        ("twitterbot", "Twitterbot/1.0"),
        ("linkedinbot", "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)"),
        ("petalbot", "Mozilla/5.0 (compatible;PetalBot;+https://webmaster.petalsearch.com/site/petalbot)"),
        ("ahrefsbot", "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"),
        ("semrushbot", "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)"),
        ("mj12bot", "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)"),
        ("dotbot", "Mozilla/5.0 (compatible; DotBot/1.2; +https://opensiteexplorer.org/dotbot)"),
        ("gptbot", "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot"),
        ("ccbot", "CCBot/2.0 (https://commoncrawl.org/faq/)"),
        ("bytespider", "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"),
        ("amazonbot", "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Amazonbot/0.1; +https://developer.amazon.com/support/amazonbot)"),
    ];

    const BROWSERS: &[&str] = &[
        // Headless Chrome is not on the list: synthetic monitoring and browser tests run it.
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "",
    ];

    #[test]
    fn every_shipped_pattern_catches_its_crawler_and_no_browser() {
        let filter = BotFilter::new(true, &[], &[]);
        assert_eq!(AGENTS.len(), DEFAULT_PATTERNS.len());
        for (pattern, agent) in AGENTS {
            assert!(DEFAULT_PATTERNS.contains(pattern), "{pattern}");
            // The pattern alone, in the agent's own spelling, is what catches it.
            let alone = BotFilter::new(false, &[pattern.to_string()], &[]);
            assert!(alone.is_bot(agent.as_bytes()), "{pattern} misses {agent}");
            assert!(filter.is_bot(agent.as_bytes()), "{agent}");
        }
        for agent in BROWSERS {
            assert!(!filter.is_bot(agent.as_bytes()), "{agent}");
        }
    }

    #[test]
    fn own_patterns_add_exemptions_win_and_off_lets_all_through() {
        let filter = BotFilter::new(
            true,
            &["uptime-checker".into()],
            &["Googlebot-Image".into()],
        );
        assert!(filter.is_bot(b"Uptime-Checker/3"));
        assert!(filter.is_bot(b"Googlebot/2.1"));
        assert!(!filter.is_bot(b"Googlebot-Image/1.0"));
        let own_only = BotFilter::new(false, &["uptime-checker".into()], &[]);
        assert!(!own_only.is_bot(b"Googlebot/2.1"));
        assert!(!BotFilter::off().is_bot(b"Googlebot/2.1"));
    }

    #[test]
    fn only_the_first_bytes_of_a_long_agent_are_scanned() {
        let filter = BotFilter::new(true, &[], &[]);
        let mut long = vec![b'a'; MAX_SCANNED];
        long.extend_from_slice(b" Googlebot");
        assert!(!filter.is_bot(&long));
    }
}
