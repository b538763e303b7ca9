package volspec

import (
	"errors"
	"fmt"
	"testing"

	"github.com/shoenig/test/must"
)

func TestParseParams(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   map[string]string
		want Params
	}{
		{"defaults", nil, Params{Replicas: 2, MinInSync: 1}},
		{"all set", map[string]string{"replicas": "3", "fs_type": "xfs", "spread": "zone", "min_in_sync": "2"}, Params{Replicas: 3, FSType: "xfs", Spread: "zone", MinInSync: 2}},
		{"one replica", map[string]string{"replicas": "1"}, Params{Replicas: 1, MinInSync: 1}},
		{"five replicas, all in sync", map[string]string{"replicas": "5", "min_in_sync": "5"}, Params{Replicas: 5, MinInSync: 5}},
		{"unknown keys ignored", map[string]string{"skuname": "x", "replicas": "4"}, Params{Replicas: 4, MinInSync: 1}},
		{"label with dash and underscore", map[string]string{"spread": "failure_domain-1"}, Params{Replicas: 2, Spread: "failure_domain-1", MinInSync: 1}},
		{"encrypted", map[string]string{"encrypted": "true"}, Params{Replicas: 2, MinInSync: 1, Encrypted: true}},
		{"encrypted as Nomad sends a bool", map[string]string{"encrypted": "1"}, Params{Replicas: 2, MinInSync: 1, Encrypted: true}},
		{"not encrypted", map[string]string{"encrypted": "0"}, Params{Replicas: 2, MinInSync: 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseParams(c.in)
			must.NoError(t, err)
			must.Eq(t, c.want, got)
		})
	}
}

func TestParseParamsRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		key, value, message string
		others              map[string]string
	}{
		{"replicas", "0", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "6", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "-1", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "+2", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", " 2", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "2.0", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "", "replicas must be a whole number from 1 to 5", nil},
		{"replicas", "99999999999999999999", "replicas must be a whole number from 1 to 5", nil},
		{"fs_type", "btrfs", "fs_type must be ext4 or xfs", nil},
		{"fs_type", "EXT4", "fs_type must be ext4 or xfs", nil},
		{"spread", "", "spread must name a node label", nil},
		{"spread", "rack,zone", "spread must name a node label", nil},
		{"spread", "consul-rack", "spread must name a node label", nil},
		{"min_in_sync", "0", "min_in_sync must be a whole number from 1 to replicas", nil},
		{"min_in_sync", "3", "min_in_sync must be a whole number from 1 to replicas (2)", nil},
		{"min_in_sync", "4", "min_in_sync must be a whole number from 1 to replicas (3)", map[string]string{"replicas": "3"}},
		{"encrypted", "yes", "encrypted must be true or false", nil},
		{"encrypted", "", "encrypted must be true or false", nil},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s=%q", c.key, c.value), func(t *testing.T) {
			t.Parallel()
			m := map[string]string{c.key: c.value}
			for k, v := range c.others {
				m[k] = v
			}
			p, err := ParseParams(m)
			must.Eq(t, Params{}, p)
			var perr *ParamsError
			must.True(t, errors.As(err, &perr), must.Sprintf("err = %v", err))
			must.Len(t, 1, perr.Problems)
			must.Eq(t, c.key, perr.Problems[0].Key)
			must.Eq(t, c.value, perr.Problems[0].Value)
			must.StrContains(t, perr.Problems[0].Message, c.message)
			must.StrContains(t, err.Error(), fmt.Sprintf("%s = %q: %s", c.key, c.value, c.message))
		})
	}
}

// Every bad parameter is in the one error, in KnownParams order, wrapped
// errors included.
func TestParamsErrorListsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := ParseParams(map[string]string{"min_in_sync": "x", "spread": "a b", "fs_type": "zfs", "replicas": "0"})
	var perr *ParamsError
	must.True(t, errors.As(fmt.Errorf("create volume: %w", err), &perr))
	var keys []string
	for _, p := range perr.Problems {
		keys = append(keys, p.Key)
	}
	must.Eq(t, []string{"replicas", "fs_type", "spread", "min_in_sync"}, keys)
}

func TestUnknownParams(t *testing.T) {
	t.Parallel()
	must.Eq(t, []string{"a", "skuname"}, UnknownParams(map[string]string{"skuname": "x", "replicas": "2", "a": "", "spread": "rack"}))
	must.SliceEmpty(t, UnknownParams(map[string]string{"replicas": "2"}))
}

func TestResolveFSType(t *testing.T) {
	t.Parallel()
	cases := []struct {
		param, mount, want, err string
	}{
		{"", "", "ext4", ""},
		{"xfs", "", "xfs", ""},
		{"", "xfs", "xfs", ""},
		{"ext4", "ext4", "ext4", ""},
		{"ext4", "xfs", "", "differ"},
		{"", "btrfs", "", "the mount fs_type must be ext4 or xfs"},
	}
	for _, c := range cases {
		t.Run(c.param+"/"+c.mount, func(t *testing.T) {
			t.Parallel()
			got, err := Params{Replicas: 2, MinInSync: 1, FSType: c.param}.ResolveFSType(c.mount)
			if c.err == "" {
				must.NoError(t, err)
				must.Eq(t, c.want, got)
				return
			}
			var perr *ParamsError
			must.True(t, errors.As(err, &perr))
			must.StrContains(t, err.Error(), c.err)
		})
	}
}
