"""Mail handling: parsing, classification, loop rules, composing and rendering."""
