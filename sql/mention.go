package sql

// MentionsRejot reports whether text contains "rejot" in any letter case. It
// is the cheap test that keeps ordinary traffic away from the parser: a
// statement that calls the API must name the rejot schema.
func MentionsRejot(text []byte) bool { return mentions(text, "rejot") }

// MentionsDDL reports whether text may hold DDL that can break a published
// version (it has the word ALTER or DROP, in any case, not inside a longer
// name): only such text is parsed to find out (see Statement.Guarded).
// Like MentionsRejot it may say yes for a mere mention, never no for a
// statement.
func MentionsDDL(text []byte) bool {
	return mentionsWord(text, "alter") || mentionsWord(text, "drop")
}

// mentionsWord is mentions for a word that no letter, digit, underscore,
// dollar or non-ASCII byte (which Postgres takes into a name) adjoins.
func mentionsWord(text []byte, word string) bool {
	for len(text) >= len(word) {
		i := index(text, word)
		if i < 0 {
			return false
		}
		end := i + len(word)
		if (i == 0 || !nameByte(text[i-1])) && (end == len(text) || !nameByte(text[end])) {
			return true
		}
		text = text[i+1:]
	}
	return false
}

func nameByte(c byte) bool {
	return c >= 0x80 || c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z'
}

// mentions reports whether text has word (lower case) in any case.
func mentions(text []byte, word string) bool { return index(text, word) >= 0 }

// index is where text first has word (lower case) in any case, or -1.
func index(text []byte, word string) int {
	for i := 0; i+len(word) <= len(text); i++ {
		if text[i]|0x20 != word[0] {
			continue
		}
		j := 1
		for ; j < len(word); j++ {
			if text[i+j]|0x20 != word[j] {
				break
			}
		}
		if j == len(word) {
			return i
		}
	}
	return -1
}
