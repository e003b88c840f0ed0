package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The values table of the chart README is generated from the "# --"
// comments of values.yaml. Regenerate it with:
//
//	go test ./deploy -run TestReadmeValuesTable -update
var update = flag.Bool("update", false, "rewrite the generated values table in the chart README")

const (
	tableStart = "<!-- values-table:start (generated from values.yaml by go test ./deploy -run TestReadmeValuesTable -update) -->"
	tableEnd   = "<!-- values-table:end -->"
)

// valueDoc is one documented value.
type valueDoc struct {
	Key, Type, Default, Description string
}

// documentedValues walks values.yaml: a key with a "# --" comment is a
// documented value; a mapping without one is a section whose keys are walked.
func documentedValues(data []byte) ([]valueDoc, []string, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, err
	}
	var docs []valueDoc
	var undocumented []string
	var walk func(prefix string, m *yaml.Node) error
	walk = func(prefix string, m *yaml.Node) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			key := prefix + k.Value
			desc, ok := description(k.HeadComment)
			if !ok && v.Kind == yaml.MappingNode && len(v.Content) > 0 {
				if err := walk(key+".", v); err != nil {
					return err
				}
				continue
			}
			if !ok {
				undocumented = append(undocumented, key)
				continue
			}
			var val any
			if err := v.Decode(&val); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			def, err := json.Marshal(val)
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			docs = append(docs, valueDoc{Key: key, Type: typeOf(v), Default: string(def), Description: desc})
		}
		return nil
	}
	if len(root.Content) == 0 {
		return nil, nil, fmt.Errorf("values.yaml is empty")
	}
	return docs, undocumented, walk("", root.Content[0])
}

func description(comment string) (string, bool) {
	lines := strings.Split(comment, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "# --"); ok {
			parts := []string{strings.TrimSpace(rest)}
			for _, more := range lines[i+1:] {
				parts = append(parts, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(more), "#")))
			}
			return strings.Join(parts, " "), true
		}
	}
	return "", false
}

func typeOf(v *yaml.Node) string {
	switch v.Kind {
	case yaml.MappingNode:
		return "object"
	case yaml.SequenceNode:
		return "list"
	}
	switch v.Tag {
	case "!!int":
		return "int"
	case "!!bool":
		return "bool"
	case "!!float":
		return "float"
	}
	return "string"
}

func valuesTable(docs []valueDoc) string {
	var b bytes.Buffer
	b.WriteString("| Key | Type | Default | Description |\n|---|---|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, d := range docs {
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", d.Key, d.Type, esc(d.Default), esc(d.Description))
	}
	return b.String()
}

func TestValuesDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("charts", ChartName, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs, undocumented, err := documentedValues(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range undocumented {
		t.Errorf("value %s has no \"# --\" comment in values.yaml", k)
	}
	if len(docs) < 20 {
		t.Fatalf("only %d documented values; the walk is broken", len(docs))
	}
}

func TestReadmeValuesTable(t *testing.T) {
	dir := filepath.Join("charts", ChartName)
	data, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs, _, err := documentedValues(data)
	if err != nil {
		t.Fatal(err)
	}
	want := valuesTable(docs)
	readmePath := filepath.Join(dir, "README.md")
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(readme), tableStart)
	got, after, ok2 := strings.Cut(rest, tableEnd)
	if !ok1 || !ok2 {
		t.Fatalf("%s lacks the markers %q and %q", readmePath, tableStart, tableEnd)
	}
	if strings.TrimSpace(got) == strings.TrimSpace(want) {
		return
	}
	if *update {
		out := before + tableStart + "\n" + want + tableEnd + after
		if err := os.WriteFile(readmePath, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("the values table in %s is out of date with values.yaml; run: go test ./deploy -run TestReadmeValuesTable -update", readmePath)
}
