package sql

// MentionsRejot reports whether text contains "rejot" in any letter case. It
// is the cheap test that keeps ordinary traffic away from the parser: a
// statement that calls the API must name the rejot schema.
func MentionsRejot(text []byte) bool {
	const word = "rejot"
	for i := 0; i+len(word) <= len(text); i++ {
		c := text[i] | 0x20
		if c != 'r' {
			continue
		}
		j := 1
		for ; j < len(word); j++ {
			if text[i+j]|0x20 != word[j] {
				break
			}
		}
		if j == len(word) {
			return true
		}
	}
	return false
}
